-- [isle seal] Makes tables read-only in place, once `init` has run: each keeps its identity,
-- its contents move behind its metatable. Receives the globals, the registry table of
-- read-only tables, the tables that were libraries before `init`, what to freeze, and the
-- task library's host channel ends (as keys; nil without the library), which are read-only
-- tables of their own.
local G, frozen, libraries, freeze_libraries, freeze_host, raw_table_functions, host_ends = ...
local type, error, rawget, rawset, setmetatable, getmetatable, tostring, next =
  type, error, rawget, rawset, setmetatable, getmetatable, tostring, next

local function refuse(_, key)
  error("attempt to modify a read-only table (field '" .. tostring(key) .. "')", 2)
end

local function freeze(t)
  if frozen[t] ~= nil or getmetatable(t) ~= nil then return false end
  local hidden = {}
  for k, v in next, t do hidden[k] = v end
  for k in next, hidden do rawset(t, k, nil) end
  frozen[t] = hidden
  setmetatable(t, {
    __index = hidden,
    __newindex = refuse,
    __metatable = false,
    -- An iterator of its own: handing out `hidden` (as `next`'s state) would let it be changed.
    __pairs = function(self)
      local key
      return function()
        local value
        key, value = next(hidden, key)
        return key, value
      end, self, nil
    end,
    __len = function() return #hidden end,
  })
  return true
end

-- The tables reachable from `t` through keys and values, without metatables.
local function freeze_deep(t)
  if not freeze(t) then return end
  for k, v in next, frozen[t] do
    if type(k) == "table" and k ~= G then freeze_deep(k) end
    if type(v) == "table" and v ~= G then freeze_deep(v) end
  end
end

-- A global is a library if it still holds the table it held before `init`; `package` stays
-- writable (`require` records what it loaded there).
for name, value in next, G do
  if type(value) == "table" and value ~= G then
    local library = libraries[name] == value
    if library and freeze_libraries and name ~= "package" then
      freeze_deep(value)
    elseif not library and freeze_host then
      freeze_deep(value)
    end
  end
end
if freeze_libraries then
  local string_meta = getmetatable("")
  if type(string_meta) == "table" then
    string_meta.__metatable = false
  end
end

-- Raw writes would bypass the metatable: refuse them on read-only tables.
local function check(t, fname)
  if frozen[t] ~= nil or (host_ends and host_ends[t] ~= nil) then
    error("bad argument #1 to '" .. fname .. "' (table is read-only)", 3)
  end
end
local raw = rawset
G.rawset = function(t, k, v)
  check(t, "rawset")
  return raw(t, k, v)
end
-- (From Lua 5.3 on, the table library goes through metamethods, which refuse already.)
local tbl = frozen[G.table] or G.table
if raw_table_functions and type(tbl) == "table" then
  for _, fname in next, { "insert", "remove", "sort", "move", "setn" } do
    local original = rawget(tbl, fname)
    if original ~= nil then
      rawset(tbl, fname, function(t, ...)
        check(t, fname)
        return original(t, ...)
      end)
    end
  end
end
