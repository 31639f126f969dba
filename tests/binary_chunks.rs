//! Binary chunks are refused by every loader Lua code can reach — `load` with a string or a
//! reader, `loadstring`, `loadfile`, `dofile`, `require` — while source loads exactly as in
//! plain Lua, module search and its error messages included.

#[cfg(not(feature = "luau"))]
use std::path::{Path, PathBuf};
#[cfg(not(feature = "luau"))]
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(not(feature = "luau"))]
use mlua_isle::mlua::{Lua, LuaOptions, StdLib};
use mlua_isle::Isle;
#[cfg(not(feature = "luau"))]
use mlua_isle::IsleBuilder;

/// A directory of its own under the system's temporary directory, removed when dropped.
#[cfg(not(feature = "luau"))]
struct TempDir(PathBuf);

#[cfg(not(feature = "luau"))]
impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mlua-isle-binary-chunks-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as a Lua string literal.
    fn lua(&self) -> String {
        format!(
            "{:?}",
            self.0.to_str().expect("a UTF-8 temporary directory")
        )
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.0.join(name), contents).unwrap();
    }
}

#[cfg(not(feature = "luau"))]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lua code that sets `dir`, puts it first on `package.path`, defines `bytecode` (a dumped
/// function that sets the global `ran` when it runs) and writes it to `evil.lua`, with a `#!`
/// line to `shebang.lua`, and defines `try(f, ...)`: calls `f` and, if it returned a function,
/// calls that too; returns whether the bytecode ran.
#[cfg(not(feature = "luau"))]
fn setup(dir: &TempDir) -> String {
    format!(
        r##"dir = {dir}
        package.path = dir .. "/?.lua;" .. package.path
        bytecode = string.dump(function() ran = true return "from bytecode" end)
        local f = assert(io.open(dir .. "/evil.lua", "wb"))
        f:write(bytecode)
        f:close()
        f = assert(io.open(dir .. "/shebang.lua", "wb"))
        f:write("#!/usr/bin/env lua\n" .. bytecode)
        f:close()
        function try(f, ...)
          ran = nil
          local ok, g = pcall(f, ...)
          if ok and type(g) == "function" then pcall(g) end
          return ran == true
        end"##,
        dir = dir.lua()
    )
}

/// The routes to bytecode, as Lua expressions calling `try`.
#[cfg(not(feature = "luau"))]
const ROUTES: &[&str] = &[
    "try(load, bytecode)",
    "try(load, bytecode, 'x', 'b')",
    "try(load, bytecode, 'x', 'bt')",
    "try(load, bytecode, 'x', 'bt', setmetatable({}, {__newindex = _G}))",
    "try(load, (function() local sent return function()
        if sent then return nil end sent = true return bytecode end end)())",
    "try(load, (function() local i = 0 return function()
        i = i + 1 return i <= #bytecode and bytecode:sub(i, i) or nil end end)())",
    "try(loadstring or load, bytecode)",
    "try(loadfile, dir .. '/evil.lua')",
    "try(loadfile, dir .. '/evil.lua', 'b')",
    "try(loadfile, dir .. '/shebang.lua')",
    "try(dofile, dir .. '/evil.lua')",
    "try(dofile, dir .. '/shebang.lua')",
    "try(require, 'evil')",
    "try(require, 'shebang')",
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    "try(load, require('string.buffer').new():put(bytecode))",
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    "try(loadstring, require('string.buffer').new():put(bytecode))",
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    "try(load, require('string.buffer').new():put(bytecode), 'x', 'bt')",
];

/// Runs every route on an isle made by `builder`; returns which ran the bytecode.
#[cfg(not(feature = "luau"))]
fn routes_that_ran(builder: IsleBuilder) -> Vec<&'static str> {
    let dir = TempDir::new();
    let setup = setup(&dir);
    let isle = builder.spawn(move |lua| lua.load(setup).exec()).unwrap();
    ROUTES
        .iter()
        .copied()
        .filter(|route| {
            isle.eval::<bool>(*route)
                .unwrap_or_else(|e| panic!("{route}: {e}"))
        })
        .collect()
}

#[test]
#[cfg(not(feature = "luau"))]
fn every_route_to_bytecode_is_refused() {
    assert_eq!(routes_that_ran(Isle::builder()), Vec::<&str>::new());
}

/// The routes are real: with binary chunks allowed, each one runs the bytecode.
#[test]
#[cfg(not(feature = "luau"))]
fn every_route_runs_bytecode_when_binary_chunks_are_allowed() {
    let ran = routes_that_ran(Isle::builder().allow_binary_chunks(true));
    let expected: Vec<&str> = ROUTES
        .iter()
        .copied()
        // Lua 5.1's `load` takes a reader only; LuaJIT loads no bytecode after a `#` line.
        .filter(|route| !(cfg!(feature = "lua51") && route.starts_with("try(load, bytecode")))
        .filter(|route| {
            !(cfg!(any(feature = "luajit", feature = "luajit52")) && route.contains("shebang"))
        })
        .collect();
    assert_eq!(ran, expected);
}

#[test]
#[cfg(not(feature = "luau"))]
fn require_reports_a_module_holding_bytecode() {
    let dir = TempDir::new();
    let setup = setup(&dir);
    let isle = Isle::spawn(move |lua| lua.load(setup).exec()).unwrap();
    let err: String = isle.eval("select(2, pcall(require, 'evil'))").unwrap();
    let file = dir.path().join("evil.lua");
    let expected = format!(
        "error loading module 'evil' from file '{}':\n\t",
        file.display()
    );
    assert!(err.starts_with(&expected), "{err}");
    // LuaJIT words it "attempt to load chunk with wrong mode".
    assert!(err.contains("binary") || err.contains("mode"), "{err}");
}

/// Outcomes of `body` on the isle and on a plain VM of the same version, described as text.
#[cfg(not(feature = "luau"))]
fn on_isle_and_plain_lua(dir: &TempDir, body: &str) -> (String, String) {
    let code = format!(
        "dir = {dir}
         package.path = dir .. '/?.lua;' .. dir .. '/?/init.lua'
         local function show(...)
           local t = {{}}
           for i = 1, select('#', ...) do t[i] = tostring((select(i, ...))) end
           return table.concat(t, ', ')
         end
         return show(pcall(function() {body}
         end))",
        dir = dir.lua()
    );
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let on_isle: String = isle.eval(code.clone()).unwrap();
    let on_plain: String = Lua::new().load(&code).set_name(&code).eval().unwrap();
    (on_isle, on_plain)
}

#[test]
#[cfg(not(feature = "luau"))]
fn source_loads_as_in_plain_lua() {
    let dir = TempDir::new();
    dir.write(
        "mod.lua",
        "local name, file = ...\nreturn {name = name, file = tostring(file)}\n",
    );
    dir.write("shebang_mod.lua", "#!/usr/bin/env lua\nreturn 42\n");
    dir.write("broken.lua", "#!/usr/bin/env lua\nreturn +\n");
    dir.write("fails.lua", "error('failing module')\n");
    dir.write("values.lua", "return 1, 2, ...\n");
    std::fs::create_dir_all(dir.path().join("pkg")).unwrap();
    dir.write("pkg/init.lua", "return 'package ' .. ...\n");
    dir.write("pkg/sub.lua", "return 'sub ' .. ...\n");
    for body in [
        "local m = require('mod') return m.name, m.file, require('mod') == m",
        "return require('shebang_mod')",
        "return require('pkg'), require('pkg.sub')",
        "local x = require('no.such.module') return x",
        "local x = require('broken') return x",
        "local x = require('fails') return x",
        "package.path = 5 local x = require('no_such_module') return x",
        "package.path = {} local x = require('no_such_module') return x",
        "package.path = '' local x = require('no_such_module') return x",
        "package.path = ';;' .. dir .. '/?.lua;;' return require('mod').name",
        "local x = require() return x",
        "return dofile(dir .. '/values.lua')",
        "return dofile(dir .. '/shebang_mod.lua')",
        "local x = dofile(dir .. '/broken.lua') return x",
        "local x = dofile(dir .. '/no_such_file.lua') return x",
        "local x = dofile({}) return x",
        "return loadfile(dir .. '/values.lua')('a')",
        "return loadfile(dir .. '/broken.lua')",
        "return loadfile(dir .. '/no_such_file.lua')",
        "return loadfile(dir)",
        "local x = loadfile({}) return x",
        "return load('return ...', 'chunk')(1, 2)",
        "return load('return +', '=named')",
        "local parts = {'return ', '1 + ', '2'} local i = 0
         return load(function() i = i + 1 return parts[i] end)()",
        "return load(function() return {} end)",
        "return load(function() error('reader failed') end)",
        "local x = load() return x",
        "local x = load({}) return x",
        "return (loadstring or load)('return 7')()",
        "return (loadstring or load)(12)",
        "local x = (loadstring or load)() return x",
    ] {
        if reports_load_errors_at_its_guard(body) {
            continue;
        }
        let (on_isle, on_plain) = on_isle_and_plain_lua(&dir, body);
        assert_eq!(on_isle, on_plain, "body:\n{body}");
    }
}

/// On LuaJIT the interrupt machinery wraps `load` in a Lua function of its own (so that a
/// reader stopped by an interrupt cannot leave hooks disabled), which `load`'s own errors name
/// as their position: such bodies are not compared there.
#[cfg(not(feature = "luau"))]
fn reports_load_errors_at_its_guard(body: &str) -> bool {
    const LOAD_ERRORS: &[&str] = &[
        "local x = load() return x",
        "local x = load({}) return x",
        "return load(function() return {} end)",
        "return load(function() error('reader failed') end)",
        "local x = load('return 1', 'c', {}) return x",
    ];
    cfg!(any(feature = "luajit", feature = "luajit52")) && LOAD_ERRORS.contains(&body)
}

/// Lua 5.2 and later: `load` and `loadfile` take a mode and an environment.
#[test]
#[cfg(not(any(feature = "lua51", feature = "luau")))]
fn modes_and_environments_work_as_in_plain_lua() {
    let dir = TempDir::new();
    dir.write("env.lua", "return x\n");
    for body in [
        "return load('return x', 'c', 't', {x = 1})()",
        "return load('return x', 'c', 'bt', {x = 2})()",
        "return load('return x', 'c', nil, {x = 3})()",
        "return load('return 1', 'c', 'b')",
        "return load('return 1', 'c', '')",
        "local x = load('return 1', 'c', {}) return x",
        "return loadfile(dir .. '/env.lua', 't', {x = 4})()",
        "return loadfile(dir .. '/env.lua', nil, {x = 5})()",
        "return type(load(function() return nil end, 'c', 't', {}))",
    ] {
        if reports_load_errors_at_its_guard(body) {
            continue;
        }
        let (on_isle, on_plain) = on_isle_and_plain_lua(&dir, body);
        assert_eq!(on_isle, on_plain, "body:\n{body}");
    }
    // A file or a reader is loaded under the caller's mode less `b`: asked for binary only,
    // a text chunk is refused as in plain Lua, with the mode reported as ''.
    for body in [
        "return loadfile(dir .. '/env.lua', 'b')",
        "return load(function() return nil end, 'c', 'b')",
    ] {
        let (on_isle, on_plain) = on_isle_and_plain_lua(&dir, body);
        assert_eq!(
            on_isle.replace("(mode is '')", "(mode is 'b')"),
            on_plain,
            "body:\n{body}"
        );
    }
}

/// With the `debug` library (a VM from a factory), the replaced loaders' upvalues lead to no
/// function that loads bytecode; nor do `package.loadlib` or the searchers of C modules load
/// native code.
#[test]
#[cfg(not(feature = "luau"))]
fn no_route_through_upvalues_or_native_code() {
    let dir = TempDir::new();
    let setup = setup(&dir);
    let isle = Isle::builder()
        // SAFETY: the test's own scripts; the debug library is the point.
        .factory(|| unsafe { Ok(Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new())) })
        .spawn(move |lua| lua.load(setup).exec())
        .unwrap();
    let ran: bool = isle
        .eval(
            r#"local seen, ran_any = {}, false
            local function visit(f, depth)
              if type(f) ~= "function" or seen[f] or depth > 3 then return end
              seen[f] = true
              ran_any = try(f, bytecode) or try(f, dir .. "/evil.lua") or ran_any
              for i = 1, 255 do
                local name, value = debug.getupvalue(f, i)
                if name == nil then break end
                visit(value, depth + 1)
              end
            end
            local searchers = package.searchers or package.loaders
            for _, f in ipairs({load, loadstring or load, loadfile, dofile, require,
                                searchers[2], package.searchpath}) do
              visit(f, 0)
            end
            return ran_any"#,
        )
        .unwrap();
    assert!(
        !ran,
        "a function reachable through upvalues ran the bytecode"
    );
    // Nor does swapping the upvalues: a stand-in runs only its own original, and anything
    // else in its upvalue (another original, a light userdata, `nil`) is a clean error.
    let (swapped_ran, messages): (bool, String) = isle
        .eval(
            r#"local any_ran, messages = false, {}
            -- The stand-in behind `f` (maybe wrapped by a guard): the C function whose
            -- upvalue 1 is a light userdata.
            local function stand_in(f, depth)
              if type(f) ~= "function" or depth > 3 then return nil end
              local name, value = debug.getupvalue(f, 1)
              if name ~= nil and type(value) == "userdata" and debug.getinfo(f, "S").what == "C" then
                return f
              end
              for i = 1, 255 do
                name, value = debug.getupvalue(f, i)
                if name == nil then break end
                local found = stand_in(value, depth + 1)
                if found then return found end
              end
            end
            local function original(f)
              local s = stand_in(f, 0)
              return s and select(2, debug.getupvalue(s, 1))
            end
            local function swap(f, value)
              local s = stand_in(f, 0)
              if s then debug.setupvalue(s, 1, value) end
              any_ran = try(f, bytecode, "x") or any_ran
              local _, err = pcall(f, "return 1")
              messages[#messages + 1] = tostring(err)
            end
            local from_load, from_loadfile = original(load), original(loadfile)
            local other = debug.upvalueid and debug.upvalueid(swap, 1) or original(string.find)
            swap(string.find, from_load)
            swap(loadfile, from_load)
            swap(loadfile, other)
            swap(load, from_loadfile)
            swap(load, nil)
            return any_ran, table.concat(messages, "\n")"#,
        )
        .unwrap();
    assert!(!swapped_ran, "a swapped upvalue ran the bytecode");
    // The last swap leaves `load` with nothing to run: a clean error. (Lua 5.1's `debug`
    // library does not touch the upvalues of C functions.)
    assert!(
        cfg!(feature = "lua51")
            || messages.ends_with("the original of this library function was replaced"),
        "{messages}"
    );
    let (loaded, message, what): (bool, String, String) = isle
        .eval("local f, msg, what = package.loadlib(dir .. '/evil.lua', 'f') return f ~= nil, msg, what")
        .unwrap();
    assert!(!loaded);
    assert_eq!(what, "absent");
    assert!(message.contains("binary chunks are refused"), "{message}");
    let err: String = isle
        .eval("select(2, pcall(require, 'no_such_c_module'))")
        .unwrap();
    assert!(err.contains("binary chunks are refused"), "{err}");
}

/// The factory's VM keeps loading native code when binary chunks are allowed.
#[test]
#[cfg(all(unix, not(feature = "luau")))]
fn native_code_stays_with_the_factory_when_binary_chunks_are_allowed() {
    let isle = Isle::builder()
        // SAFETY: no native library is actually loaded.
        .factory(|| unsafe { Ok(Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new())) })
        .allow_binary_chunks(true)
        .spawn(|_| Ok(()))
        .unwrap();
    let message: String = isle
        .eval("select(2, package.loadlib('/no/such/library.so', 'f'))")
        .unwrap();
    assert!(!message.contains("binary chunks are refused"), "{message}");
}

/// Luau has no `string.dump`, and its loaders compile source only.
#[test]
#[cfg(feature = "luau")]
fn luau_loads_no_bytecode_from_lua() {
    let bytecode = mlua_isle::mlua::chunk::Compiler::new()
        .compile("ran = true")
        .unwrap();
    let isle = Isle::spawn(move |lua| lua.globals().set("bytecode", lua.create_string(&bytecode)?))
        .unwrap();
    let (dump, ran): (bool, bool) = isle
        .eval(
            "local ok, f = pcall(loadstring, bytecode)
             if ok and f then pcall(f) end
             return string.dump == nil, ran == true",
        )
        .unwrap();
    assert!(dump);
    assert!(!ran);
}

/// Lua 5.1 reads a file once and judges the bytes it hands to Lua: a file rewritten while
/// `loadfile`, `dofile` or `require` reads it (empty, then bytecode) never runs bytecode.
#[test]
#[cfg(feature = "lua51")]
fn a_file_rewritten_while_loading_runs_no_bytecode() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let dir = TempDir::new();
    let setup = setup(&dir);
    let isle = Isle::builder()
        .spawn(move |lua| lua.load(setup).exec())
        .unwrap();
    let bytecode = std::fs::read(dir.path().join("evil.lua")).unwrap();
    let racy = dir.path().join("racy.lua");
    std::fs::write(&racy, "return 1").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, racy) = (Arc::clone(&stop), racy.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(&racy, "return 1").unwrap();
                std::fs::write(&racy, &bytecode).unwrap();
            }
        })
    };
    let ran: bool = isle
        .eval(
            r#"local path = dir .. "/racy.lua"
            local deadline = os.clock() + 1
            for i = 1, 20000 do
              if try(loadfile, path) or try(dofile, path) then return true end
              package.loaded.racy = nil
              if try(require, "racy") then return true end
              if os.clock() > deadline then break end
            end
            return false"#,
        )
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(!ran, "bytecode ran from a file rewritten while loading");
}

/// Lua 5.1's loaders close the file before anything that can fail for want of memory: a
/// `loadfile` that fails under the memory limit leaks no file descriptor.
#[test]
#[cfg(all(feature = "lua51", target_os = "linux"))]
fn loading_under_the_memory_limit_leaks_no_file() {
    let dir = TempDir::new();
    let setup = setup(&dir);
    let isle = Isle::builder()
        .memory_limit(4 << 20)
        .spawn(move |lua| lua.load(setup).exec())
        .unwrap();
    let open_files = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_files();
    isle.eval::<()>(
        r#"local path = dir .. "/evil.lua"
        for round = 1, 20 do
          local hog = {}
          pcall(function()
            while true do hog[#hog + 1] = string.rep("x", 64) .. #hog end
          end)
          for i = 1, 10 do pcall(loadfile, path) pcall(dofile, path) end
          hog = nil
          collectgarbage()
        end"#,
    )
    .unwrap();
    let after = open_files();
    // Other tests may hold a few files meanwhile; a leak holds one per failed load.
    assert!(
        after < before + 20,
        "{before} open files before, {after} after"
    );
}
