//! A web service that runs users' Lua scripts on a sandboxed pool of isles.

fn main() {}
