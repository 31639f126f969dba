#[cfg(test)]
pub(crate) mod pause;
pub(crate) mod queue;
pub(crate) mod slot;
pub(crate) mod token;
pub(crate) mod wait;
pub(crate) mod watchdog;
