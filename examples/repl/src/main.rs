//! An interactive Lua prompt whose Ctrl-C stops the running chunk, not the process.

fn main() {}
