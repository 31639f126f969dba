//! Ctrl-C while a chunk runs: the terminal's SIGINT cancels the chunk, not the process.

use std::sync::{Arc, Mutex, PoisonError};

use mlua_isle::CancelToken;

/// The process's SIGINT handler, aimed at whichever chunk is running.
///
/// The handler is installed once, and acts only while [`CtrlC::cancels`] runs a chunk. At the
/// prompt the terminal sends no SIGINT: the line editor reads Ctrl-C as a key. A SIGINT between
/// two chunks is ignored, so that a Ctrl-C meant for a chunk that had just finished cannot end
/// the session.
#[derive(Clone, Debug, Default)]
pub struct CtrlC {
    running: Arc<Mutex<Option<CancelToken>>>,
}

impl CtrlC {
    /// Installs the handler.
    ///
    /// # Errors
    ///
    /// When the process already has a SIGINT handler from `ctrlc`, or the system refuses one.
    pub fn install() -> Result<Self, ctrlc::Error> {
        let ctrl_c = CtrlC::default();
        let running = Arc::clone(&ctrl_c.running);
        // `ctrlc` runs this on a thread of its own, not in the signal handler: it may lock.
        ctrlc::set_handler(move || {
            if let Some(token) = lock(&running).as_ref() {
                token.cancel();
            }
        })?;
        Ok(ctrl_c)
    }

    /// Runs `chunk` with a fresh token that a Ctrl-C cancels meanwhile.
    pub fn cancels<T>(&self, chunk: impl FnOnce(&CancelToken) -> T) -> T {
        let token = CancelToken::new();
        *lock(&self.running) = Some(token.clone());
        let result = chunk(&token);
        *lock(&self.running) = None;
        result
    }
}

/// The handler does not panic while holding the lock; should anything else, the token slot is
/// still sound.
fn lock(running: &Mutex<Option<CancelToken>>) -> std::sync::MutexGuard<'_, Option<CancelToken>> {
    running.lock().unwrap_or_else(PoisonError::into_inner)
}
