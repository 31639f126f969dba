-- The `task` library: tasks, channels, select and timers inside one request.
--
-- Called once per VM with the host's primitives; returns the library table and the function
-- the Lua thread calls when a request ends. Written in the subset of Lua that every
-- supported version (5.1 to 5.5, LuaJIT, Luau) runs.
--
-- Structure: every request that uses the library gets a *scope* (created on first use): its
-- tasks, its ready queue and its timers. The request's own code is not a task; when it blocks
-- (join, recv, sleep, ...), it runs the scope's scheduler until what it waits for happens.
-- A task blocks by yielding to whoever resumed it (the scheduler, or `spawn`). A wait is one
-- table (`w`); each place it waits in (a channel queue, a task's joiners) holds a node of it.

local prims = ...
local now, idle_wait, open_scope = prims.now, prims.idle_wait, prims.open_scope
-- Raises the stop error if the request must stop: the interrupt never cuts into this
-- library's code, which stops here instead, between two steps.
local stop_point = prims.stop_point
local slice_begin, slice_end = prims.slice_begin, prims.slice_end
-- Lua 5.1: whether no C function (a `pcall`, say) stands between the caller and its
-- coroutine's base, across which a yield would fail.
local no_c_frames = prims.no_c_frames
-- Where the host has it: `own(co)`, whether the running coroutine is `co` and can yield.
local own = prims.own
local has_metatable = prims.has_metatable

local co_create, co_resume, co_status = coroutine.create, coroutine.resume, coroutine.status
local co_running, co_yield = coroutine.running, coroutine.yield
local co_close = coroutine.close
local co_isyieldable = coroutine.isyieldable
local error, type, select, setmetatable, tostring = error, type, select, setmetatable, tostring
local pcall, rawequal, next, rawget, rawset = pcall, rawequal, next, rawget, rawset
local getmetatable = getmetatable
local floor, huge = math.floor, math.huge
local pack = table.pack or function(...)
  return { n = select("#", ...), ... }
end
local unpack = table.unpack or unpack

-- Deep chains of eager starts (a task spawning a task spawning ...) nest C calls: past this
-- depth a new task is queued instead of started at once.
local MAX_EAGER_DEPTH = 64

-- What this library made, by object: "channel", "ticker", "host receiver", "host sender".
-- Checks use it rather than metatables, which scripts can imitate. (Tasks, of which there
-- are many, are told by their real metatable instead: see `is_task`.)
local made = setmetatable({}, { __mode = "k" })

-- Host ends are shared by every request of the VM, so what they hold stays here, out of
-- scripts' reach (a script gets the end itself: an empty table). By end: { ud = the host's
-- userdata }, and for a receiving end the values put back after their receivers were
-- cancelled: buf, bh, bt, count (as a channel's). The tasks waiting on an end are queued in
-- the scope of their request (`scope.host`), a value handed to a wait is kept in `held_*`.
local ports = setmetatable({}, { __mode = "k" })
-- Values host receiving ends handed to waits that have not taken them yet, by wait: the end
-- and the value, which go back to the end if the wait's task is cancelled. (Not in the wait,
-- which scripts can reach and change.)
local held_port = setmetatable({}, { __mode = "k" })
local held_value = setmetatable({}, { __mode = "k" })

local scope = nil    -- the scope of the running request, if it used the library
local ending = nil   -- the scope being ended, while it is
local current = nil  -- the task record running now (nil: the request's own code)
-- Whether this library told a task of the running request to cancel (`rec.cancelling`): the
-- common paths read that field (a miss through the record's metatable) only when it did.
local cancels = false
local depth = 0      -- nesting of eager starts
local seed = 12345 -- Park-Miller generator for select's starting case (exact in doubles)

-------------------------------------------------------------------------------------------
-- Queues: doubly linked lists of wait nodes.

local function q_new()
  return { head = nil, tail = nil }
end

local function q_push(q, node)
  node.q = q
  node.next = nil
  node.prev = q.tail
  if q.tail then q.tail.next = node else q.head = node end
  q.tail = node
end

local function q_unlink(node)
  local q = node.q
  if not q then return end
  if node.prev then node.prev.next = node.next else q.head = node.next end
  if node.next then node.next.prev = node.prev else q.tail = node.prev end
  node.q, node.prev, node.next = nil, nil, nil
end

-------------------------------------------------------------------------------------------
-- Scopes, the ready queue and timers (a binary heap of waits ordered by time).

local function new_scope()
  return {
    ready = {}, rh = 1, rt = 1,
    tasks = {}, live = 0,
    heap = {}, nheap = 0, seq = 0,
    host = {}, nhost = 0, -- host ends with waiters: port -> queue of waits, and how many
    in_place = {}, nip = 0, -- the stack of waits run in place (by the request's own code)
    ended = false,
  }
end

local function get_scope()
  local s = scope
  if s then return s end
  if ending then
    error("the request is ending: no new task or wait", 3)
  end
  if not open_scope() then
    error("the task library cannot be used in coroutine requests", 3)
  end
  s = new_scope()
  scope = s
  return s
end

local function ready_push(s, rec)
  local t = s.rt
  s.ready[t] = rec
  s.rt = t + 1
end

local function ready_pop(s)
  local h = s.rh
  if h == s.rt then return nil end
  local ready = s.ready
  local rec = ready[h]
  ready[h] = nil
  h = h + 1
  if h == s.rt then h = 1; s.rt = 1 end
  s.rh = h
  return rec
end

-- A timer entry keeps its time, its sequence number (first come, first fired) and its place
-- on the heap in slots 1 to 3: a task sleeping on its own (see `sleep_until`) has them in
-- the array part its record is made with, which costs less than fields of a separate wait.
local AT, SEQ, HI = 1, 2, 3

local function heap_less(a, b)
  local aat, bat = a[AT], b[AT]
  return aat < bat or (aat == bat and a[SEQ] < b[SEQ])
end

-- The heap's entries move by swaps, so that a comparison that raises (a script can write
-- an entry's slots: a task handle is one) leaves every entry on the heap once.
local function heap_up(heap, i)
  local item = heap[i]
  while i > 1 do
    local p = floor(i / 2)
    local parent = heap[p]
    if not heap_less(item, parent) then break end
    heap[i], heap[p] = parent, item
    parent[HI], item[HI] = i, p
    i = p
  end
end

local function heap_down(heap, n, i)
  local item = heap[i]
  while true do
    local c = i * 2
    if c > n then break end
    if c < n and heap_less(heap[c + 1], heap[c]) then c = c + 1 end
    local child = heap[c]
    if not heap_less(child, item) then break end
    heap[i], heap[c] = child, item
    child[HI], item[HI] = i, c
    i = c
  end
end

-- Puts `t` on the scope's timer heap, due at `at`. Calls no function (`heap_up`, inlined):
-- a task sleeping in `task.sleep` then keeps no call frame below that of the yield, which
-- Lua would keep allocated for as long as it sleeps.
local function timer_add(s, t, at)
  local seq = s.seq + 1
  s.seq = seq
  t[AT], t[SEQ] = at, seq
  local heap = s.heap
  local i = s.nheap + 1
  heap[i] = t
  t[HI] = i
  s.nheap = i
  while i > 1 do
    local p = i % 2
    p = (i - p) / 2 -- (a float on Lua 5.3+; table keys are normalized)
    local parent = heap[p]
    -- (`t` came last: it goes after a parent due at the same time.)
    if at >= parent[AT] then break end
    heap[i], heap[p] = parent, t
    parent[HI], t[HI] = i, p
    i = p
  end
end

local function timer_remove(s, t)
  local i = t[HI]
  if not i or s.heap[i] ~= t then return end
  t[HI] = nil
  local heap, n = s.heap, s.nheap
  local last = heap[n]
  heap[n] = nil
  s.nheap = n - 1
  if i < n then
    heap[i] = last
    last[HI] = i
    heap_up(heap, i)
    heap_down(heap, n - 1, last[HI])
  end
end

-------------------------------------------------------------------------------------------
-- Waits.
--
-- w = { rec = the waiting task (nil: the request's own code), scope (nil for a task's sleep:
--       its task's), fired = index of the case that fired (0: abandoned), value, ok,
--       nodes = its nodes, at/seq/hi (on the timer heap), timer_idx (the case a timer fires),
--       in_place (run by `run_until`), putback (the channel a received value came from),
--       consumed (the receiver took it) }
-- node = { w, idx = case index, val = value offered by a send, q/prev/next (its queue) }

local function wait_new(s)
  return { rec = current, scope = s, fired = nil }
end

-- The wait of a simple operation (one node, or none for a sleep): each task, and the request's
-- own code, reuses one. `val` is the value a send offers.
local function simple_wait(s, val)
  local rec = current
  local w
  if rec then
    w = rec.wt
    if not w or w.in_place then
      -- (In place: code that runs while it is waited on — a `__close` handler or a finalizer
      -- run meanwhile — waits with a wait of its own.)
      local fresh = { rec = rec, scope = s, nodes = {} }
      if not w then rec.wt = fresh end
      w = fresh
    end
  else
    w = s.rootw
    if not w or w.in_place then
      local fresh = { scope = s, nodes = {} }
      if not w then s.rootw = fresh end
      w = fresh
    end
  end
  -- (A wait of this kind is never on the timer heap, nor has nodes other than its own, unless
  -- a script planted one: then it is taken off again.)
  if w[HI] then timer_remove(s, w) end
  local node = w.node
  if node then
    if node.q then q_unlink(node) end
  else
    node = { w = w, idx = 1 }
    w.node = node
  end
  w.nodes[1] = node
  node.val = val
  -- (`value` and `ok` are set when it fires; `in_place` is cleared when such a wait ends.)
  w.fired, w.consumed, w.putback = nil, nil, nil
  return w, node
end

-- Versions that cannot tell whether a coroutine may yield: a task's yield can fail (Lua 5.1
-- in an iterator or a metamethod) and leave its wait behind; such a wait is only live while
-- its task is suspended.
local check_suspended = not co_isyieldable

-- Whether a node may still be fired: its wait is pending, its request still running, and its
-- task (if it is a task's) waits on it.
local function node_live(node)
  local w = node.w
  if w.fired or w.scope.ended then return false end
  local rec = w.rec
  if rec and not w.in_place then
    if rec.w ~= w then return false end
    if check_suspended and co_status(rec.co) ~= "suspended" then return false end
  end
  return true
end

-- Removes every other trace of a wait once it fired or was abandoned.
local function wait_detach(w)
  local nodes = w.nodes
  if nodes then
    for i = 1, #nodes do q_unlink(nodes[i]) end
  end
  if w[HI] then timer_remove(w.scope or w.rec.scope, w) end
end

-- Fires `w` through case `idx`, with a received value (or a send's success) in `value, ok`.
local function fire(w, idx, value, ok)
  w.fired = idx
  w.value, w.ok = value, ok
  local nodes = w.nodes
  if nodes then
    local node = nodes[1]
    if nodes[2] then
      for i = 1, #nodes do q_unlink(nodes[i]) end
    elseif node and node.q then
      q_unlink(node)
    end
  end
  if w[HI] then timer_remove(w.scope or w.rec.scope, w) end
  local rec = w.rec
  if rec and rec.w == w and rec.st == "waiting"
    and not (check_suspended and co_status(rec.co) ~= "suspended") then
    rec.st = "ready"
    local s = rec.scope
    local t = s.rt
    s.ready[t] = rec
    s.rt = t + 1
  end
end

-- Pops the first node of `q` that can still be fired, dropping dead ones.
local function q_pop_live(q)
  local node = q.head
  while node do
    -- Unlink the head.
    local nxt = node.next
    q.head = nxt
    if nxt then nxt.prev = nil else q.tail = nil end
    node.q, node.next = nil, nil
    -- Live: its wait is pending, its request running, its task waiting on it.
    local w = node.w
    if not w.fired and not w.scope.ended then
      local rec = w.rec
      if not rec or (rec.w == w and not (check_suspended and co_status(rec.co) ~= "suspended"))
        or w.in_place then
        return node
      end
    end
    node = nxt
  end
  return nil
end

local function q_has_live(q)
  local node = q.head
  while node do
    if node_live(node) then return true end
    local nxt = node.next
    q_unlink(node)
    node = nxt
  end
  return false
end

-------------------------------------------------------------------------------------------
-- The scheduler.

local RecvPort, SendPort = {}, {} -- host ends, filled in below

-- Delivers what host channels have for waiting tasks; returns how many waits it fired.
local function poll_host(s)
  local n = 0
  if s.nhost == 0 then return 0 end
  for port, q in next, s.host do
    local kind = made[port]
    if kind == "host receiver" then
      n = n + RecvPort.poll(port, s, q)
    elseif kind == "host sender" then
      n = n + SendPort.poll(port, s, q)
    end
  end
  return n
end

local step, settle -- forward

local function fire_timers(s, t)
  local heap = s.heap
  local fired = false
  while s.nheap > 0 do
    local top = heap[1]
    if top[AT] > t then break end
    -- Pop the root (not through the index it notes: a script can write that).
    local n = s.nheap
    local last = heap[n]
    heap[n] = nil
    s.nheap = n - 1
    top[HI] = nil
    if n > 1 then
      heap[1] = last
      last[HI] = 1
      heap_down(heap, n - 1, 1)
    end
    if top.w == top then
      -- A task asleep on its own (`sleep_until`): it wakes.
      top.w = false
      if top.st == "waiting" and not s.ended then
        top.st = "ready"
        ready_push(s, top)
      end
    elseif not top.fired and not s.ended then
      fire(top, top.timer_idx or 1, nil, true)
    end
    fired = true
  end
  return fired
end

-- Runs the scope's tasks until `w` fires: how the request's own code (or code that cannot
-- yield to the scheduler) waits.
local function run_until(w)
  local s = w.scope or w.rec.scope
  local rec = w.rec
  w.in_place = true
  local k = s.nip + 1
  s.nip = k
  s.in_place[k] = w
  local checks = 0
  while not w.fired do
    -- A safe point every few steps (each step runs task code, where the interrupt acts).
    checks = checks + 1
    if checks >= 16 then checks = 0 stop_point() end
    if rec and rec.cancelling then
      -- A task cancelled while it waits in place (inside a coroutine of its own, say).
      w.fired = 0
      wait_detach(w)
      s.in_place[k] = nil
      s.nip = k - 1
      w.in_place = nil
      error("task cancelled", 0)
    end
    local h = s.rh
    if h ~= s.rt then
      -- A round: the tasks ready now (until the wait fires), then timers and host channels
      -- (so that tasks that stay ready cannot starve them).
      local readyq = s.ready
      local left = s.rt - h
      repeat
        local ready = readyq[h]
        readyq[h] = nil
        h = h + 1
        if h == s.rt then h = 1; s.rt = 1 end
        s.rh = h
        if ready.st == "ready" and not check_suspended and not (cancels and ready.cancelling) then
          -- `step`, inlined for a task resumed where it blocked (the common case).
          local prev = current
          current = ready
          ready.st = "running"
          if slice_begin then slice_begin(ready.co) end
          settle(ready, prev, co_resume(ready.co))
        else
          step(ready)
        end
        left = left - 1
        h = s.rh
      until left == 0 or w.fired or h == s.rt
      if s.nheap > 0 then fire_timers(s, now()) end
      if s.nhost > 0 then poll_host(s) end
    else
      local t = now()
      if not fire_timers(s, t) and poll_host(s) == 0 then
        local delay
        if s.nheap > 0 then delay = s.heap[1][AT] - t end
        if delay == nil and s.nhost == 0 then
          w.fired = 0
          wait_detach(w)
          s.in_place[k] = nil
          s.nip = k - 1
          w.in_place = nil
          error("deadlock: every task is blocked and nothing can wake them", 0)
        end
        idle_wait(delay)
      end
    end
  end
  s.in_place[k] = nil
  s.nip = k - 1
  w.in_place = nil
end

-- Whether the running code can yield to the scheduler: it is a task's own coroutine, at a
-- point where that coroutine can yield.
local function in_own_task()
  local rec = current
  if not rec then return nil end
  if own then
    if own(rec.co) then return rec end
    return nil
  end
  if co_running() ~= rec.co then return nil end
  if co_isyieldable and not co_isyieldable() then return nil end
  if no_c_frames and not no_c_frames() then return nil end
  return rec
end

local block -- forward

-- Waits in queue `q` (offering `val`, for a send) until the wait fires; returns the wait.
local function wait_in(q, val)
  local rec = current
  local w, node
  if own and rec and not rec.w and own(rec.co) then
    -- A task that can yield (the common case): `simple_wait` and `block`, inlined.
    w = rec.wt
    node = w and w.node
    if node and not w.in_place and not w[HI] then
      if node.q then q_unlink(node) end
      w.nodes[1] = node
      node.val = val
      w.fired, w.consumed, w.putback = nil, nil, nil
    else
      w, node = simple_wait(rec.scope, val)
    end
    node.q = q
    node.next = nil
    local tail = q.tail
    node.prev = tail
    if tail then tail.next = node else q.head = node end
    q.tail = node
    rec.w = w
    repeat
      rec.st = "waiting"
      co_yield()
      if cancels and rec.cancelling then co_yield() end
    until w.fired
    -- (false, not nil: the field stays in the record, so that the next wait reads it
    -- without a miss through the record's metatable.)
    rec.w = false
    return w
  end
  w, node = simple_wait(scope or get_scope(), val)
  q_push(q, node)
  block(w)
  return w
end

-- Gives up the wait `w` of task `rec` (which may be the task itself, asleep on its own).
local function abandon(rec, w)
  if w == rec then
    timer_remove(rec.scope, rec)
  elseif not w.fired then
    w.fired = 0
    wait_detach(w)
  end
end

-- Blocks the running code until `w` fires.
block = function(w)
  local rec = in_own_task()
  if rec then
    local old = rec.w
    -- Left by a yield that failed (Lua 5.1): it waits no more.
    if old and old ~= w then abandon(rec, old) end
    rec.w = w
    while not w.fired do
      rec.st = "waiting"
      co_yield()
      if rec.cancelling then
        -- Cancelled while it ran nested code that resumed it: stop here.
        co_yield()
      end
    end
    rec.w = false
  else
    run_until(w)
  end
end

local function wake_joiners(rec)
  local q = rec.joiners
  if not q then return end
  local node = q_pop_live(q)
  while node do
    fire(node.w, node.idx, rec, true)
    node = q_pop_live(q)
  end
end

local function finish(rec, status)
  rec.st = status
  rec.w = nil
  local s = rec.scope
  if s.tasks[rec] then
    s.tasks[rec] = nil
    s.live = s.live - 1
  end
  wake_joiners(rec)
end

local wake_receiver -- forward

-- A received value handed to a wait that will not consume it goes back to its channel.
local function put_back(w)
  local port = held_port[w]
  if port then
    -- From a host end: what this library handed to the wait goes back, whatever the wait
    -- now says.
    local v = held_value[w]
    held_port[w], held_value[w] = nil, nil
    local st = ports[port]
    local b = st.bh - 1
    st.buf[b] = v
    st.bh = b
    st.count = st.count + 1
    local q = scope and scope.host[port]
    if q then wake_receiver(st, q, port) end
    return
  end
  if w.fired and w.putback and w.ok and not w.consumed then
    local ch = w.putback
    w.consumed = true
    local b = ch.bh - 1
    ch.buf[b] = w.value
    ch.bh = b
    ch.count = ch.count + 1
    wake_receiver(ch, ch.recvq)
  end
end

local function kill(rec)
  local w = rec.w
  if w then
    if w ~= rec and w.fired then put_back(w) else abandon(rec, w) end
  end
  rec.w = nil
  local co = rec.co
  finish(rec, "cancelled")
  if co_close and co_status(co) == "suspended" then
    pcall(co_close, co)
  end
end

-- What to do with a task once its coroutine gave control back.
-- What to do with a task once its coroutine gave control back to `prev` (the task that
-- resumed it, or nil), with what `coroutine.resume` returned.
settle = function(rec, prev, ok, ...)
  if slice_end then slice_end(prev and prev.co) end
  current = prev
  if rec.st == "waiting" and ok and not check_suspended and not (cancels and rec.cancelling) then
    -- Blocked (the common case): nothing to do. (Where a yield can fail, the coroutine may
    -- have ended instead: look.)
  elseif co_status(rec.co) == "dead" then
    if rec.cancelling then
      finish(rec, "cancelled")
    elseif ok then
      rec.results = pack(...)
      finish(rec, "done")
    else
      rec.err = (...)
      finish(rec, "failed")
    end
  elseif rec.cancelling then
    kill(rec)
  elseif rec.st == "running" then
    -- Yielded without blocking: task.yield(), a bare coroutine.yield() or preemption.
    rec.st = "ready"
    ready_push(rec.scope, rec)
  end
  if cancels and prev and prev.cancelling and rawequal(prev, in_own_task()) then
    -- The task that started this one was cancelled by it: it ends here.
    co_yield()
  end
end

local function resume(rec, ...)
  local prev = current
  current = rec
  rec.st = "running"
  if slice_begin then slice_begin(rec.co) end
  return settle(rec, prev, co_resume(rec.co, ...))
end

step = function(rec)
  local st = rec.st
  if st ~= "ready" and st ~= "new" then return end -- cancelled while queued
  if check_suspended and co_status(rec.co) ~= "suspended" then return end
  if rec.cancelling then return kill(rec) end
  local args = rec.args
  if st == "new" and args then
    -- The first resume of a task started later gets its arguments.
    rec.args = nil
    return resume(rec, unpack(args, 1, args.n))
  end
  local prev = current
  current = rec
  rec.st = "running"
  if slice_begin then slice_begin(rec.co) end
  return settle(rec, prev, co_resume(rec.co))
end

-------------------------------------------------------------------------------------------
-- Tasks.

local Task = {}
local TaskMeta = {
  __index = Task,
  __metatable = "task",
  __tostring = function(rec) return "task (" .. Task.status(rec) .. ")" end,
}
local Channel = {}

-- Whether `h` is a task this library made (scripts cannot reach `TaskMeta`).
local function is_task(h)
  return has_metatable(h, TaskMeta)
end

local function check_task(h, what)
  if not is_task(h) then
    error("bad argument #1 to '" .. what .. "' (task expected)", 3)
  end
  return h
end

local function create(s, f, start, ...)
  if type(f) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(f) .. ")", 3)
  end
  -- (Slots 1 to 3: its timer, when it sleeps. Fields `w` and up to two more fit without
  -- growing the record.)
  local rec = setmetatable(
    { false, false, false, co = co_create(f), scope = s, st = "ready" },
    TaskMeta
  )
  s.tasks[rec] = true
  s.live = s.live + 1
  if start and depth < MAX_EAGER_DEPTH then
    depth = depth + 1
    resume(rec, ...)
    depth = depth - 1
  else
    rec.st = "new"
    rec.args = pack(...)
    ready_push(s, rec)
  end
  return rec
end


local task = {}

function task.spawn(f, ...)
  return create(get_scope(), f, true, ...)
end

function task.defer(f, ...)
  return create(get_scope(), f, false, ...)
end

-- Sleeps until `at`. A task that can yield is its own wait: it goes on the timer heap itself
-- (`rec.w == rec`) and keeps no other table while it sleeps; it calls only functions that
-- call no other (Lua keeps a suspended coroutine's deepest call frames allocated). Many
-- tasks sleep at once.
local function sleep_until(s, at)
  local rec = current
  if own and rec and not rec.w and own(rec.co) then
    rec.w = rec
    timer_add(s, rec, at)
    repeat
      rec.st = "waiting"
      co_yield()
      if cancels and rec.cancelling then co_yield() end
    until rec.w ~= rec
    return
  end
  local w = wait_new(s)
  w.timer_idx = 1
  timer_add(s, w, at)
  block(w)
end

local function check_seconds(x, fname)
  if type(x) ~= "number" or x ~= x then
    if x ~= x then error("bad argument #1 to '" .. fname .. "' (number expected, got nan)", 3) end
    error("bad argument #1 to '" .. fname .. "' (number expected, got " .. type(x) .. ")", 3)
  end
  if x < 0 then x = 0 end
  return x
end

function task.sleep(seconds)
  if seconds == nil then seconds = 0 end
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    seconds = check_seconds(seconds, "sleep")
  end
  -- (A tail call: a sleeping task keeps one call frame less.)
  return sleep_until(scope or get_scope(), now() + seconds)
end

local function delayed(seconds, f, ...)
  sleep_until(scope, now() + seconds)
  return f(...)
end

function task.delay(seconds, f, ...)
  seconds = check_seconds(seconds, "delay")
  if type(f) ~= "function" then
    error("bad argument #2 to 'delay' (function expected, got " .. type(f) .. ")", 2)
  end
  return create(get_scope(), delayed, true, seconds, f, ...)
end

function task.yield()
  local s = get_scope()
  local rec = in_own_task()
  if rec then
    co_yield()
    return
  end
  -- The request's own code: let every task that is ready now run once.
  local n = s.rt - s.rh
  for _ = 1, n do
    local r = ready_pop(s)
    if not r then break end
    step(r)
  end
  fire_timers(s, now())
  poll_host(s)
end

function task.current()
  return current
end

function task.now()
  return now()
end

function Task.status(h)
  check_task(h, "status")
  local st = h.st
  -- ("new": ready, and started with its arguments when it first runs.)
  if st == "new" then return "ready" end
  return st
end

function Task.join(h)
  check_task(h, "join")
  if h.st ~= "done" and h.st ~= "failed" and h.st ~= "cancelled" then
    if rawequal(h, current) then error("a task cannot join itself", 2) end
    if h.scope.ended then error("the task's request has ended", 2) end
    local w, node = simple_wait(h.scope)
    h.joiners = h.joiners or q_new()
    q_push(h.joiners, node)
    block(w)
  end
  local status = h.st
  if status == "done" then
    local r = h.results
    return unpack(r, 1, r.n)
  elseif status == "failed" then
    error(h.err, 0)
  else
    error("task was cancelled", 2)
  end
end

local function cancel(h)
  local status = h.st
  if status == "done" or status == "failed" or status == "cancelled" then return false end
  if h.scope.ended then return false end
  if status == "running" then
    -- The running task itself, or one that started the running code and waits for it.
    cancels = true
    h.cancelling = true
    if rawequal(h, in_own_task()) then
      co_yield() -- the scheduler (or `spawn`) kills it; never resumed
    end
    return true
  end
  cancels = true
  h.cancelling = true
  kill(h)
  return true
end

function Task.cancel(h)
  check_task(h, "cancel")
  return cancel(h)
end

TaskMeta.__close = function(h)
  cancel(h)
end

-------------------------------------------------------------------------------------------
-- Channels.
--
-- ch = { cap, buf = {}, bh, bt (buffer is buf[bh .. bt-1]), count, closed,
--        recvq, sendq (queues of wait nodes) }

local ChannelMeta = {
  __index = Channel,
  __metatable = "channel",
  __tostring = function(ch) return "channel (" .. ch.count .. "/" .. ch.cap .. ")" end,
}

local function check_channel(ch, what)
  if made[ch] ~= "channel" then
    error("bad argument #1 to '" .. what .. "' (channel expected)", 3)
  end
  return ch
end

local function buf_push(ch, v)
  local t = ch.bt
  ch.buf[t] = v
  ch.bt = t + 1
  ch.count = ch.count + 1
end

local function buf_pop(ch)
  local h = ch.bh
  local v = ch.buf[h]
  ch.buf[h] = nil
  h = h + 1
  ch.count = ch.count - 1
  if ch.count == 0 then h = 1; ch.bt = 1 end
  ch.bh = h
  return v
end

-- After an item was put back into `ch` (a channel, or the state of host end `port`): hand it
-- to a receiver waiting in `q`, if any.
wake_receiver = function(ch, q, port)
  while ch.count > 0 do
    local node = q_pop_live(q)
    if not node then return end
    local w = node.w
    local v = buf_pop(ch)
    if port then
      held_port[w], held_value[w] = port, v
    else
      w.putback = ch
    end
    fire(w, node.idx, v, true)
  end
end

function task.channel(capacity)
  if capacity == nil then capacity = 0 end
  if type(capacity) ~= "number" or capacity < 0 or capacity ~= floor(capacity) then
    error("bad argument #1 to 'channel' (non-negative integer expected)", 2)
  end
  local ch = setmetatable({
    cap = capacity, buf = {}, bh = 1, bt = 1, count = 0, closed = false,
    recvq = q_new(), sendq = q_new(),
  }, ChannelMeta)
  made[ch] = "channel"
  return ch
end

-- Tries to send without blocking: true, or false and why.
local function try_send(ch, v)
  if ch.closed then return false, "closed" end
  local recvq = ch.recvq
  local node = recvq.head and q_pop_live(recvq)
  if node then
    local w = node.w
    w.putback = ch
    fire(w, node.idx, v, true)
    return true
  end
  if ch.count < ch.cap then
    buf_push(ch, v)
    return true
  end
  return false, "full"
end

-- Tries to receive without blocking: value, true; or nil, false (closed); or nil, nil (empty).
local function try_recv(ch)
  if ch.count > 0 then
    local v = buf_pop(ch)
    -- Room for a waiting sender (a put-back item may hold the buffer over capacity).
    if ch.count < ch.cap then
      local node = q_pop_live(ch.sendq)
      if node then
        buf_push(ch, node.val)
        fire(node.w, node.idx, nil, true)
      end
    end
    return v, true
  end
  local node = q_pop_live(ch.sendq)
  if node then
    local v = node.val
    fire(node.w, node.idx, nil, true)
    return v, true
  end
  if ch.closed then return nil, false end
  return nil, nil
end

local function check_value(v, what)
  if v == nil then error("bad argument #1 to '" .. what .. "' (cannot send nil)", 3) end
end

function Channel.send(ch, v)
  if made[ch] ~= "channel" then check_channel(ch, "send") end
  if v == nil then check_value(v, "send") end
  -- `try_send`, inlined.
  if ch.closed then return false end
  local recvq = ch.recvq
  local node = recvq.head and q_pop_live(recvq)
  if node then
    local w = node.w
    w.putback = ch
    fire(w, node.idx, v, true)
    return true
  end
  if ch.count < ch.cap then
    buf_push(ch, v)
    return true
  end
  return wait_in(ch.sendq, v).ok == true
end

function Channel.try_send(ch, v)
  check_channel(ch, "try_send")
  check_value(v, "try_send")
  return try_send(ch, v)
end

function Channel.recv(ch)
  if made[ch] ~= "channel" then check_channel(ch, "recv") end
  if ch.count > 0 or ch.sendq.head or ch.closed then
    local v, ok = try_recv(ch)
    if ok ~= nil then return v, ok end
  end
  local w = wait_in(ch.recvq)
  w.consumed = true
  return w.value, w.ok
end

function Channel.try_recv(ch)
  check_channel(ch, "try_recv")
  local v, ok = try_recv(ch)
  return v, ok
end

function Channel.close(ch)
  check_channel(ch, "close")
  if ch.closed then return false end
  ch.closed = true
  -- Waiting receivers find nothing more; waiting senders' values are not delivered.
  if ch.count == 0 then
    local node = q_pop_live(ch.recvq)
    while node do
      fire(node.w, node.idx, nil, false)
      node = q_pop_live(ch.recvq)
    end
  end
  local node = q_pop_live(ch.sendq)
  while node do
    fire(node.w, node.idx, nil, false)
    node = q_pop_live(ch.sendq)
  end
  return true
end

function Channel.is_closed(ch)
  check_channel(ch, "is_closed")
  return ch.closed
end

function Channel.len(ch)
  check_channel(ch, "len")
  return ch.count
end

function Channel.capacity(ch)
  check_channel(ch, "capacity")
  return ch.cap
end

local function iterate(ch)
  local v = Channel.recv(ch)
  return v
end

-- `for v in ch:iter() do ... end` (and `for v in ch do` where `__call` iteration works).
function Channel.iter(ch)
  check_channel(ch, "iter")
  return iterate, ch
end

ChannelMeta.__call = function(ch)
  return (Channel.recv(ch))
end
-- Luau's generalized iteration.
ChannelMeta.__iter = function(ch)
  return iterate, ch
end

-------------------------------------------------------------------------------------------
-- Tickers: a timer that fires every `interval` seconds; missed ticks are skipped.

local Ticker = {}
local TickerMeta = { __index = Ticker, __metatable = "ticker" }

function task.ticker(interval)
  interval = check_seconds(interval, "ticker")
  if interval <= 0 or interval == huge then
    error("bad argument #1 to 'ticker' (positive finite number expected)", 2)
  end
  local tk = setmetatable({ interval = interval, next_at = now() + interval, stopped = false, count = 0 },
    TickerMeta)
  made[tk] = "ticker"
  return tk
end

-- Consumes the tick due at or before `t`; returns how many ticks passed since the last one.
local function take_tick(tk, t)
  local missed = floor((t - tk.next_at) / tk.interval)
  tk.next_at = tk.next_at + (missed + 1) * tk.interval
  tk.count = tk.count + 1
  return tk.count
end

function Ticker.next(tk)
  if made[tk] ~= "ticker" then error("bad argument #1 to 'next' (ticker expected)", 2) end
  -- Another waiter may have taken the tick this one slept for: look again after waking.
  while true do
    if tk.stopped then return nil end
    local t = now()
    if t >= tk.next_at then return take_tick(tk, t) end
    sleep_until(get_scope(), tk.next_at)
  end
end

function Ticker.stop(tk)
  if made[tk] ~= "ticker" then error("bad argument #1 to 'stop' (ticker expected)", 2) end
  tk.stopped = true
end

TickerMeta.__call = function(tk) return Ticker.next(tk) end

-------------------------------------------------------------------------------------------
-- select

local function case_error(i, msg)
  error("bad case #" .. i .. " to 'select' (" .. msg .. ")", 3)
end

-- Checks case `i` is ready now; if so, performs it and returns true plus its results.
local function try_case(c, i)
  local ch = c.recv
  if ch ~= nil then
    if made[ch] == "channel" then
      local v, ok = try_recv(ch)
      if ok ~= nil then
        if ok == false then c.closed_seen = true end
        return true, v, ok
      end
      return false
    end
    if made[ch] == "host receiver" then
      local v, ok = RecvPort.try_recv(ch)
      if ok ~= nil then
        if ok == false then c.closed_seen = true end
        return true, v, ok
      end
      return false
    end
    case_error(i, "recv expects a channel")
  end
  ch = c.send
  if ch ~= nil then
    if made[ch] ~= "channel" then case_error(i, "send expects a channel") end
    if c.value == nil then case_error(i, "cannot send nil") end
    local ok, why = try_send(ch, c.value)
    if ok then return true, true end
    if why == "closed" then c.closed_seen = true; return true, false end
    return false
  end
  local h = c.join
  if h ~= nil then
    if not is_task(h) then case_error(i, "join expects a task") end
    local status = h.st
    if status == "done" or status == "failed" or status == "cancelled" then
      return true, h
    end
    return false
  end
  local tk = c.tick
  if tk ~= nil then
    if made[tk] ~= "ticker" then case_error(i, "tick expects a ticker") end
    if tk.stopped then return false end
    local t = now()
    if t >= tk.next_at then return true, take_tick(tk, t) end
    return false
  end
  if c.after ~= nil then
    if type(c.after) ~= "number" or c.after ~= c.after then case_error(i, "after expects seconds") end
    if c.after <= 0 then return true end
    return false
  end
  case_error(i, "expected a recv, send, join, tick or after case")
end

-- Registers case `i` in wait `w`; returns the node (nil for timers).
local function add_case(s, w, c, i)
  local ch = c.recv
  if ch ~= nil then
    local node = { w = w, idx = i }
    if made[ch] == "channel" then
      q_push(ch.recvq, node)
    else
      RecvPort.add_receiver(ch, s, node)
    end
    return node
  end
  ch = c.send
  if ch ~= nil then
    local node = { w = w, idx = i, val = c.value }
    q_push(ch.sendq, node)
    return node
  end
  local h = c.join
  if h ~= nil then
    local node = { w = w, idx = i }
    h.joiners = h.joiners or q_new()
    q_push(h.joiners, node)
    return node
  end
  local tk = c.tick
  local at
  if tk ~= nil then
    if tk.stopped then return nil end
    at = tk.next_at
  else
    at = now() + c.after
  end
  -- A wait has one timer: the earliest of its timer cases.
  if not w[HI] or at < w[AT] then
    if w[HI] then timer_remove(s, w) end
    w.timer_idx = i
    timer_add(s, w, at)
  end
  return nil
end

-- task.select(cases) with cases = { {recv = ch}, {send = ch, value = v}, {join = task},
-- {tick = ticker}, {after = seconds}, default = true }: performs exactly one ready case and
-- returns its index and results; with `default`, returns nil when none is ready.
function task.select(cases)
  if type(cases) ~= "table" then
    error("bad argument #1 to 'select' (table of cases expected)", 2)
  end
  local n = #cases
  for i = 1, n do
    if type(cases[i]) ~= "table" then case_error(i, "table expected") end
  end
  while true do
    -- Fairness: start at a random case.
    seed = (seed * 16807) % 2147483647
    local start = n > 0 and (seed % n) or 0
    local enabled = 0
    for k = 0, n - 1 do
      local i = (start + k) % n + 1
      local c = cases[i]
      if not c.closed_seen then
        local r = pack(try_case(c, i))
        if r[1] then return i, unpack(r, 2, r.n) end
        local tk = c.tick
        if not (tk ~= nil and tk.stopped) then enabled = enabled + 1 end
      end
    end
    if cases.default then return nil end
    if enabled == 0 then
      error("select has no case that can become ready", 2)
    end
    local s = get_scope()
    local w = wait_new(s)
    local nodes = {}
    w.nodes = nodes
    for i = 1, n do
      local c = cases[i]
      if not c.closed_seen then
        local node = add_case(s, w, c, i)
        if node then nodes[#nodes + 1] = node end
      end
    end
    block(w)
    -- (A value from a host end is taken here.)
    if held_port[w] then held_port[w], held_value[w] = nil, nil end
    local i = w.fired
    local c = cases[i]
    if c.recv ~= nil then
      w.consumed = true
      if w.ok == false then c.closed_seen = true end
      return i, w.value, w.ok
    elseif c.send ~= nil then
      if w.ok == false then c.closed_seen = true end
      return i, w.ok == true
    elseif c.join ~= nil then
      return i, c.join
    elseif c.tick ~= nil then
      -- Another waiter may have taken this tick, or the ticker stopped: wait again then.
      local tk, t = c.tick, now()
      if not tk.stopped and t >= tk.next_at then return i, take_tick(tk, t) end
    else
      return i
    end
  end
end

-------------------------------------------------------------------------------------------
-- Host ends: the Lua side of channels to and from Rust, around a userdata `ud` made by the
-- host. `try_recv` there returns value, true (plus a reply handle for requests) | nil, false
-- (closed) | nil, nil (empty); `try_send` returns true | false, "full" | false, "closed".
-- Waiting tasks are registered in the scope's `host` set; the scheduler polls those ends
-- (`poll`) each time it runs out of ready tasks, and parks until the host nudges it.

local Request = {}
local RequestMeta = { __index = Request, __metatable = "request" }

-- (The host checks that `handle` is a reply handle of the right kind.)
function Request.reply(req, v)
  if type(req) ~= "table" then error("bad argument #1 to 'reply' (request expected)", 2) end
  return req.handle:reply(v)
end

function Request.reject(req, message)
  if type(req) ~= "table" then error("bad argument #1 to 'reject' (request expected)", 2) end
  return req.handle:reject(tostring(message))
end

-- A value from a host receiving end, or one put back after its receiver was cancelled.
function RecvPort.try_recv(port)
  local st = ports[port]
  if st.count > 0 then return buf_pop(st), true end
  local v, ok, handle = st.ud:try_recv()
  if handle then v = setmetatable({ value = v, handle = handle }, RequestMeta) end
  return v, ok
end

-- Queues `node` on host end `port` in scope `s`.
local function host_wait(port, s, node)
  local q = s.host[port]
  if not q then
    q = q_new()
    s.host[port] = q
    s.nhost = s.nhost + 1
  end
  q_push(q, node)
end

RecvPort.add_receiver = host_wait

-- (`q`: the queue of `port` in scope `s`.)
function RecvPort.poll(port, s, q)
  local n = 0
  while q_has_live(q) do
    local v, ok = RecvPort.try_recv(port)
    if ok == nil then break end
    local node = q_pop_live(q)
    local w = node.w
    if ok then held_port[w], held_value[w] = port, v end
    fire(w, node.idx, v, ok)
    n = n + 1
    if ok == false then
      node = q_pop_live(q)
      while node do
        fire(node.w, node.idx, nil, false)
        n = n + 1
        node = q_pop_live(q)
      end
    end
  end
  if not q.head and s.host[port] then s.host[port] = nil s.nhost = s.nhost - 1 end
  return n
end

function SendPort.poll(port, s, q)
  local n = 0
  local ud = ports[port].ud
  while q_has_live(q) do
    local node = q.head
    local ok, sent, why = pcall(ud.try_send, ud, node.val)
    if ok and not sent and why == "full" then break end
    q_unlink(node)
    fire(node.w, node.idx, nil, ok and sent == true)
    n = n + 1
  end
  if not q.head and s.host[port] then s.host[port] = nil s.nhost = s.nhost - 1 end
  return n
end

local function refuse(_, key)
  error("attempt to modify a read-only table (field '" .. tostring(key) .. "')", 2)
end

local HostRecv, HostSend = {}, {}
local HostRecvMeta = { __index = HostRecv, __newindex = refuse, __metatable = "host receiver" }
local HostSendMeta = { __index = HostSend, __newindex = refuse, __metatable = "host sender" }

local function check_port(port, meta, what)
  if made[port] ~= meta.__metatable then
    error("bad argument #1 to '" .. what .. "' (" .. meta.__metatable .. " expected)", 3)
  end
  return port
end

function HostRecv.recv(port)
  check_port(port, HostRecvMeta, "recv")
  local v, ok = RecvPort.try_recv(port)
  if ok ~= nil then return v, ok end
  local s = get_scope()
  local w, node = simple_wait(s)
  host_wait(port, s, node)
  block(w)
  w.consumed = true
  if held_port[w] then held_port[w], held_value[w] = nil, nil end
  return w.value, w.ok
end

function HostRecv.try_recv(port)
  check_port(port, HostRecvMeta, "try_recv")
  return RecvPort.try_recv(port)
end

function HostRecv.close(port)
  check_port(port, HostRecvMeta, "close")
  return ports[port].ud:close()
end

function HostRecv.len(port)
  check_port(port, HostRecvMeta, "len")
  local st = ports[port]
  return st.count + st.ud:len()
end

function HostRecv.is_closed(port)
  check_port(port, HostRecvMeta, "is_closed")
  local st = ports[port]
  return st.count == 0 and st.ud:is_closed()
end

local function host_iterate(port)
  return (HostRecv.recv(port))
end

function HostRecv.iter(port)
  check_port(port, HostRecvMeta, "iter")
  return host_iterate, port
end

HostRecvMeta.__call = host_iterate
HostRecvMeta.__iter = function(port) return host_iterate, port end

function HostSend.send(port, v)
  check_port(port, HostSendMeta, "send")
  check_value(v, "send")
  local sent, why = ports[port].ud:try_send(v)
  if sent then return true end
  if why == "closed" then return false end
  local s = get_scope()
  local w, node = simple_wait(s, v)
  host_wait(port, s, node)
  block(w)
  return w.ok == true
end

function HostSend.try_send(port, v)
  check_port(port, HostSendMeta, "try_send")
  check_value(v, "try_send")
  return ports[port].ud:try_send(v)
end

function HostSend.close(port)
  check_port(port, HostSendMeta, "close")
  return ports[port].ud:close()
end

function HostSend.is_closed(port)
  check_port(port, HostSendMeta, "is_closed")
  return ports[port].ud:is_closed()
end

function HostSend.len(port)
  check_port(port, HostSendMeta, "len")
  return ports[port].ud:len()
end

-- Called by the host: the Lua end of a channel around its userdata (an empty table: what it
-- holds is in `ports`).
local function wrap_host_end(ud, kind)
  local port
  if kind == "recv" then
    port = setmetatable({}, HostRecvMeta)
    ports[port] = { ud = ud, buf = {}, bh = 1, bt = 1, count = 0 }
    made[port] = "host receiver"
  else
    port = setmetatable({}, HostSendMeta)
    ports[port] = { ud = ud }
    made[port] = "host sender"
  end
  return port
end

-------------------------------------------------------------------------------------------
-- End of a request: every task it spawned is cancelled, and every trace of it in channels
-- shared with later requests goes.

-- A value handed to a wait of the ended request that never consumed it goes back to its
-- channel. Runs on tables a script can reach and may have tampered with (`rawset`,
-- metatables), from the host, possibly while no interrupt can reach it: raw operations only,
-- on channels this library made, so that no script code runs.
local function put_back_raw(w)
  local port = held_port[w]
  if port then
    -- From a host end: what this library recorded (its state is out of scripts' reach).
    held_port[w] = nil
    local st = ports[port]
    local b = st.bh - 1
    st.buf[b] = held_value[w]
    held_value[w] = nil
    st.bh = b
    st.count = st.count + 1
    return
  end
  if not rawget(w, "fired") or rawget(w, "ok") ~= true or rawget(w, "consumed") then return end
  local ch = rawget(w, "putback")
  if made[ch] ~= "channel" then return end
  local bh, count, buf = rawget(ch, "bh"), rawget(ch, "count"), rawget(ch, "buf")
  if type(bh) == "number" and type(count) == "number" and type(buf) == "table" then
    rawset(buf, bh - 1, rawget(w, "value"))
    rawset(ch, "bh", bh - 1)
    rawset(ch, "count", count + 1)
    rawset(w, "consumed", true)
  end
end

-- Unlinks the nodes of wait `w` from their queues, with raw operations only.
local function detach_raw(w)
  local nodes = rawget(w, "nodes")
  if type(nodes) ~= "table" then return end
  local i = 1
  local node = rawget(nodes, 1)
  while type(node) == "table" do
    local q = rawget(node, "q")
    if type(q) == "table" then
      local prev, nxt = rawget(node, "prev"), rawget(node, "next")
      if type(prev) == "table" then rawset(prev, "next", nxt) else rawset(q, "head", nxt) end
      if type(nxt) == "table" then rawset(nxt, "prev", prev) else rawset(q, "tail", prev) end
      rawset(node, "q", nil)
      rawset(node, "prev", nil)
      rawset(node, "next", nil)
    end
    i = i + 1
    node = rawget(nodes, i)
  end
end

-- `close_tasks`: whether to close the tasks' coroutines (running their pending `__close`
-- handlers, Lua 5.4+); false when the request is being stopped, or when a first call could
-- not finish. Touches task records (which scripts can reach) with raw operations only.
--
-- It writes only fields every record has (or clears them): a request whose tasks filled the
-- VM leaves no memory for a new one, and a record that grew would cost an allocation per
-- task. (A record is not marked `cancelling`: no code of its task runs any more, except
-- `__close` handlers run by closing it, for which the scope is gone already.) Its allocations
-- are few (values put back into channels); the host lifts the memory limit for the call
-- without `close_tasks`, which runs no script code.
local function end_scope(close_tasks)
  local s = ending or scope
  if not s then return end
  ending = s
  scope = nil
  current = nil
  depth = 0
  s.ended = true
  local tasks = s.tasks
  local rec = next(tasks)
  while rec do
    rawset(rec, "st", "cancelled")
    local w = rawget(rec, "w")
    -- (Only if present: Lua 5.1 and LuaJIT add a key even to assign it nil.)
    if w ~= nil then rawset(rec, "w", nil) end
    if type(w) == "table" then
      put_back_raw(w)
      detach_raw(w)
    end
    local co = rawget(rec, "co")
    if close_tasks and co_close and type(co) == "thread" and co_status(co) == "suspended" then
      pcall(co_close, co)
    end
    tasks[rec] = nil
    -- On from the record just cleared (clearing fields while traversing is allowed; nothing
    -- adds one: no task can be made while the scope ends). Starting over from the first slot
    -- each time would scan every slot emptied so far: quadratic in the number of tasks.
    rec = next(tasks, rec)
  end
  for k = 1, s.nip do
    local w = s.in_place[k]
    s.in_place[k] = nil
    put_back_raw(w)
    detach_raw(w)
  end
  s.nip = 0
  -- (No new tables here: an allocation could run a finalizer.)
  s.rh, s.rt, s.nheap = 1, 1, 0
  cancels = false
  ending = nil
end

-- The last resort if `end_scope` failed even so: the scope is let go (it was marked ended
-- first, so that nothing of it fires again), with whatever it still holds. Assigns only.
local function drop_scope()
  local s = ending or scope
  if s then s.ended = true end
  ending = nil
  scope = nil
  current = nil
  depth = 0
  cancels = false
end

return task, end_scope, wrap_host_end, ports, drop_scope
