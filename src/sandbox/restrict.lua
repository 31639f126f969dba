-- [isle sandbox] Takes away what the sandbox does not allow, before `init` runs. Receives the
-- globals, the options, the registry table of read-only tables, and the host's helpers.
local G, opts, frozen, compile, sink = ...
local type, error, rawget, rawset, select, setmetatable, tostring, next =
  type, error, rawget, rawset, select, setmetatable, tostring, next
local concat = table and table.concat

if not opts.file_system then
  G.io, G.dofile, G.loadfile = nil, nil, nil
end
if not opts.modules then
  G.require, G.module, G.package = nil, nil, nil
end
if not opts.debug then
  G.debug = nil
end
if not opts.environment_functions then
  G.getfenv, G.setfenv = nil, nil
end
if not opts.jit then
  -- (LuaJIT's `ffi` calls native code; a VM from a factory may have it as a global.)
  G.jit, G.ffi = nil, nil
end
if not opts.full_os and type(G.os) == "table" then
  local keep = { clock = true, time = true, date = true, difftime = true }
  local drop = {}
  for name in next, G.os do
    if not keep[name] then drop[#drop + 1] = name end
  end
  for i = 1, #drop do G.os[drop[i]] = nil end
end
if not opts.string_dump and type(G.string) == "table" then
  G.string.dump = nil
end

-- `load` reads text only, and runs what it loads in the environment it is given.
G.loadstring = nil
local needs_env = opts.load_needs_env
G.load = function(chunk, name, mode, env)
  if type(chunk) == "function" then
    local reader, parts = chunk, {}
    while true do
      local piece = reader()
      if piece == nil or piece == "" then break end
      if type(piece) ~= "string" then
        return nil, "reader function must return a string"
      end
      parts[#parts + 1] = piece
    end
    chunk = concat and concat(parts) or ""
  elseif type(chunk) ~= "string" then
    error("bad argument #1 to 'load' (string expected, got " .. type(chunk) .. ")", 2)
  end
  if mode ~= nil and (type(mode) ~= "string" or not mode:find("t", 1, true)) then
    return nil, "attempt to load a text chunk (mode is '" .. tostring(mode) .. "')"
  end
  if env == nil then
    if needs_env then
      error("bad argument #4 to 'load' (an environment table is required in the sandbox)", 2)
    end
    env = G
  elseif type(env) ~= "table" then
    error("bad argument #4 to 'load' (table expected, got " .. type(env) .. ")", 2)
  end
  if name ~= nil and type(name) ~= "string" then
    name = tostring(name)
  end
  return compile(chunk, name, env)
end

-- `print` (and Lua 5.4's `warn`) go where the host routes them.
if not opts.keep_print then
  G.warn = nil
end
if sink ~= nil then
  G.print = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do
      parts[i] = tostring((select(i, ...)))
    end
    sink(concat and concat(parts, "\t") or "")
  end
elseif not opts.keep_print then
  G.print = function(...)
    for i = 1, select("#", ...) do
      tostring((select(i, ...)))
    end
  end
end

if not opts.finalizers then
  G.newproxy = nil
  G.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("cannot set a finalizer (__gc) in the sandbox", 2)
    end
    return setmetatable(t, mt)
  end
end

if not opts.gc_control then
  local collect = G.collectgarbage
  local harmless = { count = true, collect = true, step = true, isrunning = true }
  G.collectgarbage = function(option, ...)
    if option ~= nil and not harmless[option] then
      error("collectgarbage('" .. tostring(option) .. "') is not allowed in the sandbox", 2)
    end
    -- A step of a given size moves the collector's debt; a negative one would put it to sleep.
    if option == "step" and select("#", ...) > 0 then
      local size = ...
      if type(size) ~= "number" or size < 0 or size > 1048576 then
        error("collectgarbage('step', n) takes 0 <= n <= 1048576 in the sandbox", 2)
      end
    end
    return collect(option, ...)
  end
end
