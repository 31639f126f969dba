//! The Lua functions an isle handed out as `FunctionHandle`s: kept in the VM's registry, one
//! entry per handle (and its clones), freed once the handle is dropped.
//!
//! Handles live on other threads and may be dropped at any time, anywhere. Dropping one only
//! records its key in the VM's [`Releases`] and nudges the Lua thread with a [`ReleaseJob`];
//! the registry entry is removed here, on the Lua thread, when the nudge runs or after the next
//! request, whichever comes first. mlua's own `RegistryKey` drop would only mark the entry for
//! reuse, keeping the function alive until then: the entry is removed explicitly instead.

use std::sync::Arc;
use std::time::Instant;

use mlua::{Function, Lua, RegistryKey};
use slab::Slab;

use crate::core::queue::Job;
use crate::core::release::Releases;
use crate::core::slot::Resolve;
use crate::core::token::CancelToken;
use crate::error::IsleError;
use crate::lua_thread::worker::Worker;

/// The functions handed out by one VM, by key.
pub(crate) struct Functions {
    keys: Slab<RegistryKey>,
    releases: Arc<Releases>,
}

impl Functions {
    pub(crate) fn new() -> Self {
        Functions {
            keys: Slab::new(),
            releases: Releases::new(),
        }
    }

    /// Keeps `function` in the registry; returns its key and where a handle gives it back.
    pub(crate) fn insert(
        &mut self,
        lua: &Lua,
        function: Function,
    ) -> Result<(usize, Arc<Releases>), IsleError> {
        // Keys given back are freed first, so that their slots (and registry entries) are
        // reused rather than added to.
        self.release(lua);
        let entry = lua.create_registry_value(function)?;
        Ok((self.keys.insert(entry), self.releases.clone()))
    }

    /// The function under `key`, if it is still kept.
    pub(crate) fn get(&self, lua: &Lua, key: usize) -> Option<Result<Function, IsleError>> {
        let entry = self.keys.get(key)?;
        Some(lua.registry_value(entry).map_err(IsleError::from))
    }

    /// Frees the functions whose handles are gone.
    pub(crate) fn release(&mut self, lua: &Lua) {
        if self.keys.is_empty() {
            // Nothing is handed out, so nothing can be given back until the next hand-out (on
            // this thread): a nudge left set would keep that one's release from nudging.
            self.releases.reset_nudge();
            return;
        }
        let keys = &mut self.keys;
        self.releases.take(|key| {
            if let Some(entry) = keys.try_remove(key) {
                // Cannot fail: the key was made by this VM.
                let _ = lua.remove_registry_value(entry);
            }
        });
    }

    /// How many functions are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The message a dropped handle sends: frees the functions given back. It is no request: no
/// caller waits for it, it runs no Lua code and a pool does not count it.
pub(crate) struct ReleaseJob;

impl Resolve for ReleaseJob {
    fn resolve(&self, _: IsleError) {}

    fn cancel(&self) {}
}

impl Job for ReleaseJob {
    fn run(self: Arc<Self>, worker: &mut Worker, _: CancelToken, _: Option<Instant>) {
        worker.vm.release_functions();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_key_is_freed_and_its_function_collected() {
        let lua = Lua::new();
        let mut functions = Functions::new();
        let weak: mlua::Table = lua
            .load("weak = setmetatable({}, {__mode = 'v'}) return weak")
            .eval()
            .unwrap();
        let function: Function = lua
            .load("local f = function() return 1 end weak[1] = f return f")
            .eval()
            .unwrap();
        let (key, releases) = functions.insert(&lua, function).unwrap();
        assert_eq!(
            functions
                .get(&lua, key)
                .unwrap()
                .unwrap()
                .call::<i64>(())
                .unwrap(),
            1
        );
        lua.gc_collect().unwrap();
        assert!(weak.get::<Option<Function>>(1).unwrap().is_some());

        assert!(releases.push(key));
        functions.release(&lua);
        assert_eq!(functions.len(), 0);
        assert!(functions.get(&lua, key).is_none());
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        assert!(weak.get::<Option<Function>>(1).unwrap().is_none());
    }
}
