fn main() { let lua = mlua::Lua::new(); lua.load(std::fs::read_to_string("/tmp/mem.lua").unwrap()).exec().unwrap(); }
