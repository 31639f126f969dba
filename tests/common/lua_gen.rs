//! A seeded generator of small, valid and deterministic Lua programs, for differential tests
//! (the same program must give the same result in an isle and in plain mlua).
//!
//! Programs are built from a small typed grammar: every variable keeps one type (number,
//! string, sequence of numbers, object with a metatable, number-to-number function), so most
//! programs run to their end instead of failing at the first statement; the ones that fail do
//! so deterministically. What a program observes goes into a log table, `LOG`, returned at the
//! end with a few variables.
//!
//! Determinism rules the generator keeps:
//!
//! - every loop is bounded by a small constant, recursion by a small depth, and strings kept
//!   in variables by a length cap;
//! - nothing reads the clock, random numbers, memory counters or addresses: tables and
//!   functions are logged by type name (or a `code` field), never through `tostring`;
//! - nothing depends on `pairs` order (only sequences and fixed keys are read), and sequences
//!   stay short enough that Lua 5.4's `table.sort` never randomizes its pivot;
//! - no finalizers and no weak tables, so the collector's timing is never observable.
//!
//! Constructs some Lua versions lack (`goto`, `//`, bitwise operators, `<close>`, Luau's
//! `continue`, compound assignment and if-expressions) are generated only behind `cfg!`
//! checks of the crate's Lua version features; the rest is portable.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LUA51: bool = cfg!(feature = "lua51");
const LUAJIT: bool = cfg!(any(feature = "luajit", feature = "luajit52"));
const LUAU: bool = cfg!(feature = "luau");
const LUA52: bool = cfg!(feature = "lua52");
const LUA53_PLUS: bool = cfg!(any(feature = "lua53", feature = "lua54", feature = "lua55"));
const LUA54_PLUS: bool = cfg!(any(feature = "lua54", feature = "lua55"));
/// `goto` and labels.
const GOTO: bool = !LUA51 && !LUAU;
/// The `//` operator.
const FLOOR_DIV: bool = LUA53_PLUS || LUAU;
/// `&`, `|`, `~`, `<<`, `>>`.
const BIT_OPS: bool = LUA53_PLUS;
/// `<close>`, `<const>` and `__close`.
const CLOSE: bool = LUA54_PLUS;
/// `coroutine.close`.
const CO_CLOSE: bool = LUA54_PLUS || LUAU;
/// An isle's `pcall` and `xpcall` are Lua functions wrapping the originals (Lua 5.2, LuaJIT,
/// Luau), whose frames `error` levels and argument errors can see (see [`KNOWN_DIFFERENCES`]).
const PCALL_IN_LUA: bool = LUA52 || LUAJIT || LUAU;
/// The `utf8` library.
const UTF8: bool = LUA53_PLUS || LUAU;

/// The longest string a variable holds (longer values are cut by the program's `cut`).
const STR_CAP: usize = 40;
/// The most elements a sequence grows to (Lua 5.4 randomizes sort pivots above 100).
const SEQ_CAP: usize = 24;

/// Functions every program defines first: `log` records values (tables and functions by type
/// name only), `cut` caps string lengths, `val` reads an object's `v` field raw.
const PRELUDE: &str = r##"local LOG = {}
local tostr, typ, ssub, rawget_, select_ = tostring, type, string.sub, rawget, select
local unpack = table.unpack or unpack
local function cut(s)
  if typ(s) == "string" and #s > 40 then return ssub(s, 1, 40) end
  return s
end
local function show(v)
  local t = typ(v)
  if t == "string" then return ssub(v, 1, 160) end
  if t == "number" or t == "boolean" or t == "nil" then return tostr(v) end
  if t == "table" then
    local c = rawget_(v, "code")
    if c ~= nil then return "table:" .. show(c) end
  end
  return t
end
local function log(...)
  local n = select_("#", ...)
  for i = 1, n do
    if #LOG < 200 then LOG[#LOG + 1] = show((select_(i, ...))) end
  end
end
local function nz(x)
  if x == 0 then return 1 end
  return x
end
local function val(x)
  if typ(x) == "table" then return rawget_(x, "v") or 0 end
  return x
end
"##;

/// String literals (plain, with pattern characters, empty).
const STR_LITS: &[&str] = &[
    "a", "hello", "x1", "", "A-b c", "lua", "%d", "42", "3.5", "abcabc", "  sp ", "Zz9",
];

/// Patterns for `find`, `match`, `gmatch` and `gsub`: (pattern, has a capture).
const PATTERNS: &[(&str, bool)] = &[
    ("%a", false),
    ("%d+", false),
    ("(%a)(%a)", true),
    ("[aeiou]", false),
    ("^h", false),
    ("l+", false),
    (".", false),
    ("%s", false),
    ("(%w+)", true),
    ("b?c", false),
    ("%a*", false),
    ("x", false),
];

/// Generates the program for `seed`: the same seed always gives the same text.
///
/// # Examples
///
/// ```ignore
/// let src = lua_gen::program(7);
/// assert_eq!(src, lua_gen::program(7));
/// assert!(src.trim_end().lines().last().unwrap().starts_with("return"));
/// ```
pub fn program(seed: u64) -> String {
    Gen::new(seed, false).program()
}

/// Like [`program`], but also generating the constructs for which an isle is known to differ
/// from plain Lua (see [`KNOWN_DIFFERENCES`]), to check whether they still do.
pub fn program_with_known_differences(seed: u64) -> String {
    Gen::new(seed, true).program()
}

/// Where an isle is known to behave differently from plain Lua; [`program`] leaves these
/// constructs out (on the versions concerned) so that the differential test stays green.
///
/// - Lua 5.1: the isle's `xpcall` follows Lua 5.2+: it passes its extra arguments to the
///   function (5.1's ignores them) and requires a function as handler (5.1 accepts any value,
///   so `xpcall(f)` reports "value expected" there, "function expected" in an isle).
/// - Lua 5.2, LuaJIT, Luau: the isle's `pcall` and `xpcall` are Lua wrappers, so an
///   `error(v, 2)` (or higher level) that reaches past the protected function names a line of
///   the wrapper (`[isle pcall]:31:`) where plain Lua names the caller or nothing, and the
///   original `xpcall`'s argument errors carry the wrapper's position (`[isle pcall]:29:
///   bad argument #2 to 'xpcall' ...`); so do `pcall`'s (`pcall()`).
/// - LuaJIT: the isle's `load` is a Lua wrapper too (`[isle load]`), so `load()`'s argument
///   error carries its position and name where plain LuaJIT's has the caller's.
pub const KNOWN_DIFFERENCES: &str = "lua51: xpcall extra arguments and non-function handlers; \
     lua52/luajit/luau: error levels and pcall/xpcall argument errors see the Lua wrappers; \
     luajit: load's argument errors see its Lua wrapper";

/// Variables in scope, by type.
#[derive(Clone, Default)]
struct Scope {
    /// Assignable numbers.
    nums: Vec<String>,
    /// Numbers that must not be assigned (loop counters and control variables).
    fixed_nums: Vec<String>,
    strs: Vec<String>,
    seqs: Vec<String>,
    objs: Vec<String>,
    /// Functions from number to number.
    funcs: Vec<String>,
}

/// What the statement being generated sits in.
#[derive(Clone, Default)]
struct Ctx {
    /// Nested loops in the current function (for `break`, `continue` and nesting bounds).
    loops: usize,
    /// `goto` targets that continue an enclosing loop of the current function.
    labels: Vec<String>,
    /// Nested functions (their loops are kept shorter, so calls cannot multiply much).
    functions: usize,
    /// Nested coroutine bodies around the statement.
    coroutines: usize,
}

struct Gen {
    rng: StdRng,
    /// Whether to generate the constructs of [`KNOWN_DIFFERENCES`].
    known: bool,
    out: String,
    indent: usize,
    scope: Scope,
    ctx: Ctx,
    next_id: usize,
    /// Statements left to generate, so nesting cannot blow the size up.
    budget: usize,
    /// Metatables defined so far (objects of the same metatable compare with each other).
    metatables: Vec<String>,
}

impl Gen {
    fn new(seed: u64, known: bool) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            known,
            out: String::with_capacity(2048),
            indent: 0,
            scope: Scope::default(),
            ctx: Ctx::default(),
            next_id: 0,
            budget: 0,
            metatables: Vec::new(),
        }
    }

    // ---- helpers -------------------------------------------------------------------------

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.random_range(lo..=hi)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn pick_name(&mut self, names: &[String]) -> Option<String> {
        if names.is_empty() {
            None
        } else {
            Some(names[self.rng.random_range(0..names.len())].clone())
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn line(&mut self, text: &str) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    /// Runs `f` one indentation level deeper, in a nested scope.
    fn nested(&mut self, f: impl FnOnce(&mut Self)) {
        let saved = self.scope.clone();
        self.indent += 1;
        f(self);
        self.indent -= 1;
        self.scope = saved;
    }

    /// Runs `f` as the body of a new function: no enclosing loops or labels.
    fn in_function(&mut self, f: impl FnOnce(&mut Self)) {
        let saved = self.ctx.clone();
        self.ctx.loops = 0;
        self.ctx.labels.clear();
        self.ctx.functions += 1;
        self.nested(f);
        self.ctx = saved;
    }

    /// Runs `f` as a loop body (nested scope, one more loop).
    fn in_loop(&mut self, label: Option<String>, f: impl FnOnce(&mut Self)) {
        let saved = self.ctx.clone();
        self.ctx.loops += 1;
        if let Some(label) = label {
            self.ctx.labels.push(label);
        }
        self.nested(f);
        self.ctx = saved;
    }

    /// Upper bound of a loop here: short inside functions and nested loops.
    fn loop_bound(&mut self) -> i64 {
        if self.ctx.functions > 0 || self.ctx.loops > 0 {
            self.int(0, 3)
        } else {
            self.int(0, 6)
        }
    }

    fn may_loop(&self) -> bool {
        self.ctx.loops < 2 && self.ctx.functions < 3
    }

    // ---- the program ---------------------------------------------------------------------

    fn program(mut self) -> String {
        self.out.push_str(PRELUDE);
        self.budget = self.int(10, 30) as usize;
        for _ in 0..self.int(1, 3) {
            let name = self.fresh("n");
            let e = self.num_lit();
            self.line(&format!("local {name} = {e}"));
            self.scope.nums.push(name);
        }
        for _ in 0..self.int(1, 2) {
            let name = self.fresh("s");
            let e = self.str_lit();
            self.line(&format!("local {name} = {e}"));
            self.scope.strs.push(name);
        }
        let name = self.fresh("t");
        let items: Vec<String> = (0..self.int(0, 5)).map(|_| self.num_lit()).collect();
        self.line(&format!("local {name} = {{{}}}", items.join(", ")));
        self.scope.seqs.push(name);
        if self.chance(0.7) {
            let name = self.fresh("g");
            let e = self.num_lit();
            self.line(&format!("{name} = {e}"));
            self.scope.nums.push(name);
        }
        if self.chance(0.5) {
            let name = self.fresh("gs");
            let e = self.str_lit();
            self.line(&format!("{name} = {e}"));
            self.scope.strs.push(name);
        }
        if self.chance(0.8) {
            self.metatable_and_objects();
        }
        if self.chance(0.2) {
            self.line("log(select(\"#\", ...), coroutine.isyieldable and coroutine.isyieldable())");
        }
        while self.budget > 0 {
            self.stmt();
        }
        let mut ret = vec!["LOG".to_owned()];
        for _ in 0..self.int(0, 4) {
            let e = match self.int(0, 4) {
                0 => self.num_expr(0),
                1 => self.str_expr(0),
                2 => self
                    .pick_name(&self.scope.seqs.clone())
                    .unwrap_or("nil".into()),
                3 => self
                    .pick_name(&self.scope.objs.clone())
                    .unwrap_or("true".into()),
                _ => self.bool_expr(1),
            };
            ret.push(e);
        }
        self.line(&format!("return {}", ret.join(", ")));
        self.out
    }

    /// A metatable with every metamethod the generator uses, and two objects.
    fn metatable_and_objects(&mut self) {
        let mt = self.fresh("MT");
        self.line(&format!("local {mt} = {{}}"));
        let index = if self.chance(0.5) {
            "{w = 5, z = 7}"
        } else {
            "function(o, k) return #k end"
        };
        self.line(&format!("{mt}.__index = {index}"));
        let newindex = match self.int(0, 2) {
            0 => "function(o, k, v) rawset(o, k, val(v) * 2) end",
            1 => "function(o, k, v) log(\"ni\", k) rawset(o, k, v) end",
            _ => "{}",
        };
        self.line(&format!("{mt}.__newindex = {newindex}"));
        let add = self.pick(&[
            "function(a, b) return val(a) + val(b) end",
            "function(a, b) return val(a) * 2 - val(b) end",
        ]);
        self.line(&format!("{mt}.__add = {add}"));
        self.line(&format!(
            "{mt}.__eq = function(a, b) return val(a) % 3 == val(b) % 3 end"
        ));
        self.line(&format!(
            "{mt}.__lt = function(a, b) return val(a) < val(b) end"
        ));
        let le = self.pick(&[
            "function(a, b) return val(a) <= val(b) end",
            "function(a, b) return not (val(b) < val(a)) end",
        ]);
        self.line(&format!("{mt}.__le = {le}"));
        self.line(&format!(
            "{mt}.__call = function(self, x) return val(self) + (x or 0) end"
        ));
        let tostring = self.pick(&[
            "function(self) return \"O\" .. tostr(val(self)) end",
            "function(self) return \"obj\" end",
        ]);
        self.line(&format!("{mt}.__tostring = {tostring}"));
        self.line(&format!("{mt}.__len = function(self) return 7 end"));
        self.line(&format!(
            "{mt}.__concat = function(a, b) return show(val(a)) .. \"&\" .. show(val(b)) end"
        ));
        if CLOSE {
            self.line(&format!(
                "{mt}.__close = function(o, e) log(\"close\", val(o), e) end"
            ));
        }
        self.metatables.push(mt.clone());
        for _ in 0..2 {
            let name = self.fresh("o");
            let v = self.num_lit();
            self.line(&format!("local {name} = setmetatable({{v = {v}}}, {mt})"));
            self.scope.objs.push(name);
        }
    }

    // ---- statements ----------------------------------------------------------------------

    fn block(&mut self, min: i64, max: i64) {
        let n = self.int(min, max);
        for _ in 0..n {
            if self.budget == 0 {
                break;
            }
            self.stmt();
        }
    }

    fn stmt(&mut self) {
        self.budget = self.budget.saturating_sub(1);
        let nested_ok = self.indent < 6;
        loop {
            let done = match self.int(0, 31) {
                0..=2 => self.stmt_num_assign(),
                3 | 4 => self.stmt_str_assign(),
                5..=7 => self.stmt_log(),
                8 if nested_ok => self.stmt_if(),
                9 if nested_ok && self.may_loop() => self.stmt_for(),
                10 if nested_ok && self.may_loop() => self.stmt_while(),
                11 if nested_ok && self.may_loop() => self.stmt_repeat(),
                12 if self.ctx.loops > 0 => self.stmt_break_or_continue(),
                13 if nested_ok && self.ctx.functions < 2 => self.stmt_function(),
                14 if self.ctx.functions < 2 => self.stmt_counter_closure(),
                15 if self.ctx.functions < 2 => self.stmt_recursion(),
                16 | 17 => self.stmt_table(),
                18 => self.stmt_gmatch(),
                19 if nested_ok && self.ctx.functions < 2 => self.stmt_pcall(),
                20 if nested_ok && self.ctx.functions < 2 => self.stmt_xpcall(),
                21 if nested_ok && self.ctx.functions < 3 && self.ctx.coroutines < 2 => {
                    self.stmt_coroutine()
                }
                22 if self.ctx.functions == 0 && self.indent == 0 => self.stmt_tamper(),
                23 => self.stmt_object(),
                24 => self.stmt_misuse(),
                25 => self.stmt_load(),
                26 => self.stmt_varargs(),
                27 if self.ctx.coroutines > 0 => self.stmt_yield(),
                28 if GOTO && nested_ok => self.stmt_goto_loop(),
                29 if CLOSE && nested_ok => self.stmt_close(),
                30 if self.chance(0.15) => self.stmt_error(),
                31 if LUAU => self.stmt_compound(),
                _ => false,
            };
            if done {
                return;
            }
        }
    }

    fn stmt_num_assign(&mut self) -> bool {
        let e = self.num_expr(0);
        if self.scope.nums.is_empty() || self.chance(0.3) {
            let name = self.fresh("n");
            if CLOSE && self.chance(0.1) {
                self.line(&format!("local {name} <const> = {e}"));
                self.scope.fixed_nums.push(name);
            } else {
                self.line(&format!("local {name} = {e}"));
                self.scope.nums.push(name);
            }
        } else if self.scope.nums.len() >= 2 && self.chance(0.1) {
            let a = self.pick_name(&self.scope.nums.clone()).unwrap();
            let b = self.pick_name(&self.scope.nums.clone()).unwrap();
            self.line(&format!("{a}, {b} = {b}, {a}"));
        } else {
            let name = self.pick_name(&self.scope.nums.clone()).unwrap();
            self.line(&format!("{name} = {e}"));
        }
        true
    }

    fn stmt_str_assign(&mut self) -> bool {
        let e = self.str_expr(0);
        if self.scope.strs.is_empty() || self.chance(0.3) {
            let name = self.fresh("s");
            self.line(&format!("local {name} = cut({e})"));
            self.scope.strs.push(name);
        } else {
            let name = self.pick_name(&self.scope.strs.clone()).unwrap();
            self.line(&format!("{name} = cut({e})"));
        }
        true
    }

    fn stmt_log(&mut self) -> bool {
        let n = self.int(1, 3);
        let parts: Vec<String> = (0..n).map(|_| self.any_expr()).collect();
        self.line(&format!("log({})", parts.join(", ")));
        true
    }

    fn stmt_if(&mut self) -> bool {
        let c = self.bool_expr(0);
        self.line(&format!("if {c} then"));
        self.nested(|g| g.block(1, 3));
        if self.chance(0.3) {
            let c = self.bool_expr(0);
            self.line(&format!("elseif {c} then"));
            self.nested(|g| g.block(1, 2));
        }
        if self.chance(0.4) {
            self.line("else");
            self.nested(|g| g.block(1, 2));
        }
        self.line("end");
        true
    }

    /// A loop body; with `goto` available, sometimes wrapped so that `goto <label>` continues.
    fn loop_body(&mut self) {
        if GOTO && self.chance(0.3) {
            let label = self.fresh("C");
            self.in_loop(Some(label.clone()), |g| {
                g.line("do");
                g.nested(|g| g.block(1, 3));
                g.line("end");
                g.line(&format!("::{label}::"));
            });
        } else {
            self.in_loop(None, |g| g.block(1, 3));
        }
    }

    fn stmt_for(&mut self) -> bool {
        let var = self.fresh("i");
        let hi = self.loop_bound();
        let header = match self.int(0, 3) {
            0 => format!("for {var} = {hi}, 1, -1 do"),
            1 => format!("for {var} = 0, {}, 0.5 do", hi / 2),
            2 => format!("for {var} = 1, {}, 2 do", hi * 2),
            _ => format!("for {var} = 1, {hi} do"),
        };
        self.line(&header);
        self.nested(|g| {
            g.scope.fixed_nums.push(var);
            g.loop_body();
        });
        self.line("end");
        true
    }

    fn stmt_while(&mut self) -> bool {
        let var = self.fresh("w");
        let hi = self.loop_bound();
        self.line(&format!("local {var} = 0"));
        self.line(&format!("while {var} < {hi} do"));
        self.nested(|g| {
            // The counter moves first, so `break`, `continue` and `goto` cannot skip it.
            g.line(&format!("{var} = {var} + 1"));
            g.scope.fixed_nums.push(var.clone());
            g.loop_body();
        });
        self.line("end");
        self.scope.fixed_nums.push(var);
        true
    }

    fn stmt_repeat(&mut self) -> bool {
        let var = self.fresh("r");
        let hi = self.loop_bound();
        self.line(&format!("local {var} = 0"));
        self.line("repeat");
        self.nested(|g| {
            g.line(&format!("{var} = {var} + 1"));
            g.scope.fixed_nums.push(var.clone());
            g.loop_body();
        });
        self.line(&format!("until {var} >= {hi}"));
        true
    }

    fn stmt_break_or_continue(&mut self) -> bool {
        let c = self.bool_expr(1);
        if LUAU && self.chance(0.5) {
            self.line(&format!("if {c} then continue end"));
        } else if let Some(label) = self.pick_name(&self.ctx.labels.clone()) {
            if self.chance(0.6) {
                self.line(&format!("if {c} then goto {label} end"));
            } else {
                self.line(&format!("if {c} then break end"));
            }
        } else {
            self.line(&format!("if {c} then break end"));
        }
        true
    }

    /// A backward `goto` loop with a counter.
    fn stmt_goto_loop(&mut self) -> bool {
        let var = self.fresh("gt");
        let label = self.fresh("L");
        let hi = self.int(1, 3);
        self.line("do");
        self.nested(|g| {
            g.line(&format!("local {var} = 0"));
            g.line(&format!("::{label}::"));
            g.line(&format!("{var} = {var} + 1"));
            g.scope.fixed_nums.push(var.clone());
            g.line("do");
            g.nested(|g| g.block(1, 2));
            g.line("end");
            g.line(&format!("if {var} < {hi} then goto {label} end"));
        });
        self.line("end");
        true
    }

    fn stmt_function(&mut self) -> bool {
        let name = self.fresh("f");
        let param = self.fresh("a");
        self.line(&format!("local function {name}({param})"));
        self.in_function(|g| {
            g.scope.nums.push(param);
            g.block(0, 3);
            let e = g.num_expr(0);
            g.line(&format!("return {e}"));
        });
        self.line("end");
        self.scope.funcs.push(name);
        true
    }

    /// A closure over a private counter (an upvalue only it changes).
    fn stmt_counter_closure(&mut self) -> bool {
        let maker = self.fresh("mk");
        let name = self.fresh("ctr");
        let start = self.num_lit();
        self.line(&format!("local function {maker}(c)"));
        self.line("  return function(x) c = c + (x or 1) return c end");
        self.line("end");
        self.line(&format!("local {name} = {maker}({start})"));
        self.scope.funcs.push(name);
        true
    }

    fn stmt_recursion(&mut self) -> bool {
        let name = self.fresh("rec");
        let depth = self.int(1, 12);
        match self.int(0, 2) {
            0 => {
                let base = self.num_lit();
                self.line(&format!("local function {name}(k)"));
                self.line(&format!("  if k <= 0 then return {base} end"));
                self.line(&format!("  return {name}(k - 1) + k * 2"));
                self.line("end");
            }
            1 => {
                // Recursion through pcall: each level catches the one below.
                self.line(&format!("local function {name}(k)"));
                self.line("  if k <= 0 then error(\"bottom\", 0) end");
                self.line(&format!(
                    "  local ok, e = pcall({name}, k - 1) return (ok and e or 0) + k"
                ));
                self.line("end");
            }
            _ => {
                // Through a string: gsub with a function replacement calling back.
                self.line(&format!("local function {name}(k)"));
                self.line("  if k <= 0 then return 1 end");
                self.line(&format!(
                    "  local s = string.gsub(\"ab\", \"%a\", function(c) return {name}(k - 1) end)"
                ));
                self.line("  return #s");
                self.line("end");
            }
        }
        // Called with a small literal depth only: never added to `funcs`.
        self.line(&format!("log({name}({depth}))"));
        true
    }

    fn stmt_table(&mut self) -> bool {
        let Some(t) = self.pick_name(&self.scope.seqs.clone()) else {
            let name = self.fresh("t");
            self.line(&format!("local {name} = {{}}"));
            self.scope.seqs.push(name);
            return true;
        };
        let cap = SEQ_CAP;
        match self.int(0, 11) {
            0 => {
                let e = self.num_expr(0);
                self.line(&format!("if #{t} < {cap} then table.insert({t}, {e}) end"));
            }
            1 => {
                let e = self.num_expr(0);
                self.line(&format!(
                    "if #{t} < {cap} then table.insert({t}, 1, {e}) end"
                ));
            }
            2 => self.line(&format!("log(table.remove({t}))")),
            3 => self.line(&format!("log(table.remove({t}, 1))")),
            4 => self.line(&format!("table.sort({t})")),
            5 => {
                let cmp = self.pick(&[
                    "function(a, b) return a > b end",
                    "function(a, b) return val(a) % 5 < val(b) % 5 end",
                    "function(a, b) error({code = \"cmp\"}) end",
                ]);
                self.line(&format!("log(pcall(table.sort, {t}, {cmp}))"));
            }
            6 => {
                let e = self.num_expr(0);
                self.line(&format!("if #{t} < {cap} then {t}[#{t} + 1] = {e} end"));
            }
            7 => {
                let sep = self.pick(&["\",\"", "\"\"", "\" | \""]);
                self.line(&format!("log(table.concat({t}, {sep}))"));
            }
            8 => self.line(&format!("log(select(\"#\", unpack({t})), (unpack({t})))")),
            9 => {
                let k = self.int(1, 4);
                let e = self.num_expr(0);
                self.line(&format!("if #{t} >= {k} then {t}[{k}] = {e} end"));
            }
            10 => self.line(&format!("log(pcall(math.max, unpack({t})))")),
            _ => {
                let name = self.fresh("t");
                let items: Vec<String> = (0..self.int(0, 4)).map(|_| self.num_expr(1)).collect();
                self.line(&format!("local {name} = {{{}}}", items.join(", ")));
                self.scope.seqs.push(name);
            }
        }
        true
    }

    fn stmt_gmatch(&mut self) -> bool {
        let s = self.str_operand();
        let (pat, _) = self.pick(PATTERNS);
        let var = self.fresh("m");
        self.line(&format!("for {var} in string.gmatch({s}, \"{pat}\") do"));
        self.nested(|g| {
            g.line(&format!("log({var})"));
        });
        self.line("end");
        true
    }

    /// An error value for `error`.
    fn error_value(&mut self) -> String {
        match self.int(0, 5) {
            0 => format!("\"e{}\"", self.int(0, 9)),
            1 => format!("{{code = {}}}", self.int(0, 9)),
            2 => format!("{}", self.int(0, 9)),
            3 => "setmetatable({code = 5}, {__tostring = function() return \"TS\" end})".into(),
            4 => "nil".into(),
            _ => {
                let s = self.str_expr(1);
                format!("cut({s})")
            }
        }
    }

    /// `error(value[, level])`.
    fn error_call(&mut self) -> String {
        let v = self.error_value();
        // Levels above 1 can reach an isle's Lua pcall wrapper (a known difference).
        let top = if PCALL_IN_LUA && !self.known { 1 } else { 4 };
        match self.int(0, top) {
            0 => format!("error({v})"),
            1 => format!("error({v}, 0)"),
            2 => format!("error({v}, 2)"),
            3 => format!("error({v}, 3)"),
            _ => format!("error({v}, 1)"),
        }
    }

    fn stmt_pcall(&mut self) -> bool {
        let ok = self.fresh("ok");
        let e = self.fresh("e");
        self.line(&format!("local {ok}, {e} = pcall(function(p)"));
        self.in_function(|g| {
            g.scope.fixed_nums.push("p".into());
            g.block(0, 3);
            if g.chance(0.5) {
                let c = g.bool_expr(1);
                let err = g.error_call();
                g.line(&format!("if {c} then {err} end"));
            }
            let r = g.any_expr();
            g.line(&format!("return {r}"));
        });
        let arg = self.num_lit();
        self.line(&format!("end, {arg})"));
        self.line(&format!("log({ok}, {e})"));
        true
    }

    fn stmt_xpcall(&mut self) -> bool {
        let handler = self.pick(&[
            "function(m) return \"H:\" .. show(m) end",
            "show",
            "function(m) error(\"again\", 0) end",
            "function(m) return m, 2 end",
        ]);
        self.line("log(xpcall(function(a, b)");
        self.in_function(|g| {
            // `a` is not a number everywhere: Lua 5.1's xpcall passes no arguments.
            g.block(0, 2);
            let err = g.error_call();
            if g.chance(0.7) {
                g.line(&err);
            }
            g.line("return a, b");
        });
        // Lua 5.1's xpcall ignores extra arguments, an isle's passes them (a known difference).
        let extra = if (!LUA51 || self.known) && self.chance(0.5) {
            ", 1, 2"
        } else {
            ""
        };
        self.line(&format!("end, {handler}{extra}))"));
        true
    }

    /// A coroutine resumed a few times (with `create`/`resume` or `wrap`), logging what it
    /// yields and its status.
    fn stmt_coroutine(&mut self) -> bool {
        let co = self.fresh("co");
        let wrap = self.chance(0.35);
        self.line("do");
        self.nested(|g| {
            g.line(&format!("local {co}"));
            let body = if wrap {
                "coroutine.wrap"
            } else {
                "coroutine.create"
            };
            g.line(&format!("{co} = {body}(function(y)"));
            g.in_function(|g| {
                g.ctx.coroutines += 1;
                g.scope.nums.push("y".into());
                if !wrap && g.chance(0.4) {
                    g.line(&format!("log(coroutine.status({co}))"));
                }
                g.block(1, 4);
                if g.chance(0.5) {
                    g.stmt_yield();
                }
                let r = g.any_expr();
                g.line(&format!("return {r}"));
            });
            g.line("end)");
            let times = g.int(1, 4);
            let var = g.fresh("k");
            g.line(&format!("for {var} = 1, {times} do"));
            if wrap {
                g.line(&format!("  log(pcall({co}, {var}))"));
            } else {
                g.line(&format!(
                    "  log(coroutine.resume({co}, {var}), coroutine.status({co}))"
                ));
            }
            g.line("end");
            if !wrap && CO_CLOSE && g.chance(0.3) {
                g.line(&format!(
                    "log(coroutine.close({co}), coroutine.status({co}))"
                ));
            }
        });
        self.line("end");
        true
    }

    /// Yields in one of several ways (inside a coroutine body).
    fn stmt_yield(&mut self) -> bool {
        let e = self.num_expr(1);
        match self.int(0, 8) {
            0 => self.line(&format!("y = (coroutine.yield({e})) or y")),
            1 => self.line(&format!("log(coroutine.yield({e}, \"two\"))")),
            // Across pcall (an error on Lua 5.1).
            2 => self.line(&format!(
                "log(pcall(function() return coroutine.yield({e}) end))"
            )),
            3 => self.line(&format!("log(pcall(coroutine.yield, {e}))")),
            // Across a C function: always an error.
            4 => self.line(
                "log(pcall(table.sort, {3, 1, 2}, function(a, b) coroutine.yield(a) return a < b end))",
            ),
            5 => self.line(
                "log(pcall(string.gsub, \"ab\", \"%a\", function(c) return coroutine.yield(c) end))",
            ),
            6 => self.line("log(coroutine.isyieldable and coroutine.isyieldable(), coroutine.running() ~= nil)"),
            7 => self.line(&format!(
                "log(select(\"#\", xpcall(function() return coroutine.yield({e}) end, show)))"
            )),
            // Across a metamethod.
            _ => self.line(
                "log(setmetatable({}, {__index = function(o, k) return coroutine.yield(k) end}).key)",
            ),
        }
        true
    }

    /// Library tampering: replaced library functions, a metatable on `_G`, the string
    /// metatable changed.
    fn stmt_tamper(&mut self) -> bool {
        let old = self.fresh("old");
        match self.int(0, 10) {
            0 => {
                self.line(&format!("local {old} = string.rep"));
                self.line(&format!(
                    "string.rep = function(s, n, sep) return {old}(s, n) .. \"!\" end"
                ));
            }
            1 => self.line("string.rep = function(s, n) return \"R\" .. show(n) end"),
            2 => self.line(
                "setmetatable(_G, {__index = function(t, k) return #k end, \
                 __newindex = function(t, k, v) log(\"newg\", k) rawset(t, k, v) end})",
            ),
            3 => {
                self.line(&format!("local {old} = pcall"));
                self.line(&format!(
                    "pcall = function(f, ...) log(\"pc\") return {old}(f, ...) end"
                ));
            }
            4 => self.line("tostring = function(v) return \"T\" .. type(v) end"),
            5 => {
                self.line(&format!("local {old} = getmetatable(\"\").__index"));
                self.line(&format!(
                    "getmetatable(\"\").__index = function(s, k) return {old}[k] or function() return k end end"
                ));
                self.line("log((\"abc\"):upper(), (\"abc\"):nosuch())");
            }
            6 => {
                self.line("getmetatable(\"\").__call = function(s, ...) return s .. select(\"#\", ...) end");
                self.line("log(pcall(function() return (\"ab\")(1, 2) end))");
            }
            7 => {
                self.line("getmetatable(\"\").__add = function(a, b) return \"ADD\" end");
                self.line("log(pcall(function() return \"10\" + 1, \"x\" + 1 end))");
            }
            8 => {
                self.line(&format!("local {old} = xpcall"));
                self.line(&format!(
                    "xpcall = function(f, h, ...) log(\"xpc\") return {old}(f, h, ...) end"
                ));
            }
            9 => {
                self.line(&format!("local {old} = coroutine.yield"));
                self.line(&format!(
                    "coroutine.yield = function(...) log(\"yield\") return {old}(...) end"
                ));
            }
            _ => {
                // New globals: logged when _G has a __newindex, readable meanwhile.
                let name = self.fresh("ng");
                let e = self.num_expr(1);
                self.line(&format!("{name} = {e}"));
                self.line(&format!("log({name}, missing_{name} or 0)"));
            }
        }
        true
    }

    fn stmt_object(&mut self) -> bool {
        let Some(o) = self.pick_name(&self.scope.objs.clone()) else {
            return self.stmt_log();
        };
        match self.int(0, 3) {
            0 => {
                let e = self.num_expr(1);
                self.line(&format!("{o}.v = {e}"));
            }
            1 => {
                let k = self.pick(&["extra", "w", "q"]);
                let e = self.num_expr(1);
                self.line(&format!("{o}.{k} = {e}"));
                self.line(&format!("log(rawget({o}, \"{k}\"), {o}.{k})"));
            }
            2 => {
                let other = self.pick_name(&self.scope.objs.clone()).unwrap();
                self.line(&format!(
                    "log({o} == {other}, {o} < {other}, {o} <= {other}, rawequal({o}, {other}))"
                ));
            }
            _ => {
                let mt = self.pick_name(&self.metatables.clone()).unwrap();
                let name = self.fresh("o");
                let e = self.num_expr(1);
                self.line(&format!("local {name} = setmetatable({{v = {e}}}, {mt})"));
                self.scope.objs.push(name);
            }
        }
        true
    }

    /// Misused library calls, caught by pcall: bad arguments, resuming what cannot be resumed.
    fn stmt_misuse(&mut self) -> bool {
        let mut calls = vec![
            "pcall(error)",
            "pcall(42)",
            "pcall(coroutine.resume)",
            "pcall(coroutine.resume, coroutine.running())",
            "pcall(coroutine.wrap, 1)",
            "pcall(coroutine.create)",
            "pcall(coroutine.status, 1)",
            "pcall(coroutine.wrap(function() end))",
            "pcall(function() local f = coroutine.wrap(function() end) f() f() end)",
            "pcall(function() local f = coroutine.wrap(function() error(\"in wrap\") end) f() end)",
            "pcall(function() local f = coroutine.wrap(function() error({code = 3}) end) f() end)",
            "coroutine.resume(coroutine.create(function() error(\"in co\") end))",
            "coroutine.resume(coroutine.create(function() error() end))",
            "coroutine.resume(coroutine.create(function() return pcall(error, \"deep\") end))",
            "pcall(string.rep)",
            "pcall(string.rep, \"x\", -1)",
            "pcall(setmetatable, 1, {})",
            "pcall(string.format, \"%d\", \"x\")",
            "pcall(table.concat, {1, {}, 3})",
            "pcall(table.insert, {}, 1, 2, 3)",
            "pcall(select, -1)",
            "pcall(tostring)",
            "pcall(string.char, 256)",
            "select(\"#\", pcall(select, 2, \"a\", \"b\", \"c\"))",
            "pcall(function() return nil .. \"x\" end)",
            "pcall(function() local t = nil; return t.x end)",
            "pcall(function() return {} < {} end)",
            "pcall(function() return #nil end)",
            "pcall(function() undefined_fn() end)",
            "pcall(function() return 1 < \"x\" end)",
            "pcall(coroutine.yield, 1)",
            "coroutine.running() ~= nil, select(2, coroutine.running())",
            "pcall(string.gsub)",
            "pcall(string.find, \"a\", \"[\")",
            "pcall(string.match, \"a\", \"%\")",
            "pcall(string.gmatch)",
            "pcall(string.gsub, \"abc\", \"%w\", \"%2\")",
            "pcall(unpack)",
            "pcall(unpack, {1, 2}, 1, 3)",
        ];
        if !PCALL_IN_LUA || self.known {
            // pcall's own argument error (a known difference where the isle's is Lua).
            calls.push("pcall(pcall)");
        }
        if !LUAJIT || self.known {
            // load's argument error (a known difference on LuaJIT, whose isle `load` is Lua).
            calls.push("pcall(load)");
        }
        if !PCALL_IN_LUA || self.known {
            // Error levels reaching the caller of pcall (a known difference where it is Lua).
            calls.push("pcall(error, \"lvl\", 2)");
            calls.push("pcall(function() error(\"lvl2\", 2) end)");
            calls.push("pcall(string.gsub, \"ab\", \"%a\", function(c) error(\"in repl\", 2) end)");
        }
        if !LUA51 && !LUAJIT && !LUAU {
            calls.push("pcall(load(\"return x\", \"c\", \"t\", {x = 5}))");
            calls.push("load(\"return 1\", \"c\", \"b\")");
            calls.push("pcall(load, \"return 1\", \"c\", \"q\")");
        }
        if (!LUA51 && !PCALL_IN_LUA) || self.known {
            // xpcall's argument errors: Lua 5.1's takes any handler, an isle's wants a function;
            // where the isle's is a Lua wrapper, they carry its position (known differences).
            calls.push("pcall(xpcall)");
            calls.push("pcall(xpcall, print)");
            calls.push("xpcall(function() return 1 end, 42)");
        }
        if CO_CLOSE {
            calls.push("pcall(coroutine.close)");
            calls.push("pcall(coroutine.close, coroutine.running())");
        }
        if LUA53_PLUS {
            calls.push("pcall(function() return 1 // 0 end)");
            calls.push("pcall(function() return 1 % 0 end)");
            calls.push("pcall(function() return 1.5 | 0 end)");
            calls.push("pcall(math.tointeger, \"x\")");
        }
        let call = self.pick(&calls);
        self.line(&format!("log({call})"));
        true
    }

    /// Loading code at run time, from a string or a reader function.
    fn stmt_load(&mut self) -> bool {
        let src = self.pick(&[
            "return 1 + 2",
            "return x +",
            "return ...",
            "return 'abc'",
            "error('from loaded')",
            "local a = 1 return a, a + 1",
        ]);
        let ld = self.fresh("ld");
        self.line(&format!("local {ld} = loadstring or load"));
        if self.chance(0.7) {
            // Under pcall: Luau's `loadstring` raises syntax errors instead of returning them.
            self.line(&format!(
                "if {ld} then local ok, f, err = pcall({ld}, \"{src}\") if not ok then log(f) elseif f then log(pcall(f, 9)) else log(err) end end"
            ));
        } else if self.chance(0.5) {
            self.line(&format!(
                "if {ld} then local ok, f, err = pcall({ld}, \"{src}\", \"=named\") if not ok then log(f) elseif f then log(pcall(f)) else log(err) end end"
            ));
        } else if !LUAU {
            // `load` with a reader function (Luau has no `load`).
            let parts = self.fresh("parts");
            let idx = self.fresh("pi");
            self.line(&format!(
                "local {parts}, {idx} = {{\"return \", \"4 * 5\"}}, 0"
            ));
            self.line(&format!(
                "log(pcall(load(function() {idx} = {idx} + 1 return {parts}[{idx}] end)))"
            ));
        }
        true
    }

    fn stmt_varargs(&mut self) -> bool {
        let name = self.fresh("va");
        self.line(&format!(
            "local function {name}(...) return select(\"#\", ...), (select(2, ...)), ... end"
        ));
        let args: Vec<String> = (0..self.int(0, 3))
            .map(|_| {
                if self.chance(0.3) {
                    "nil".into()
                } else {
                    self.num_expr(1)
                }
            })
            .collect();
        let args: String = args.iter().map(|a| format!(", {a}")).collect();
        self.line(&format!("log(pcall({name}{args}))"));
        true
    }

    fn stmt_close(&mut self) -> bool {
        let name = self.fresh("cl");
        self.line("do");
        self.nested(|g| {
            let obj = match g.pick_name(&g.metatables.clone()) {
                Some(mt) if g.chance(0.5) => format!("setmetatable({{v = 1}}, {mt})"),
                _ => "setmetatable({}, {__close = function(o, e) log(\"closed\", show(e)) end})"
                    .to_owned(),
            };
            g.line(&format!("local {name} <close> = {obj}"));
            g.block(1, 2);
        });
        self.line("end");
        true
    }

    fn stmt_error(&mut self) -> bool {
        let c = self.bool_expr(1);
        let err = self.error_call();
        self.line(&format!("if {c} then {err} end"));
        true
    }

    fn stmt_compound(&mut self) -> bool {
        let Some(name) = self.pick_name(&self.scope.nums.clone()) else {
            return false;
        };
        let op = self.pick(&["+=", "-=", "*="]);
        let e = self.num_expr(1);
        self.line(&format!("{name} {op} {e}"));
        true
    }

    // ---- expressions ---------------------------------------------------------------------

    fn any_expr(&mut self) -> String {
        match self.int(0, 3) {
            0 | 1 => self.num_expr(0),
            2 => self.str_expr(0),
            _ => self.bool_expr(0),
        }
    }

    fn num_lit(&mut self) -> String {
        match self.int(0, 9) {
            0..=4 => self.int(0, 10).to_string(),
            5 => (-self.int(1, 5)).to_string(),
            6 => self
                .pick(&["0.5", "1.25", "-3.75", "2.0", "1e3", "0.1"])
                .to_owned(),
            7 => self
                .pick(&["2^31", "2^53", "math.huge", "-math.huge", "math.pi"])
                .to_owned(),
            _ => self.int(11, 1000).to_string(),
        }
    }

    fn num_operand(&mut self) -> String {
        let mut names = self.scope.nums.clone();
        names.extend(self.scope.fixed_nums.iter().cloned());
        if !names.is_empty() && self.chance(0.6) {
            self.pick_name(&names).unwrap()
        } else {
            self.num_lit()
        }
    }

    fn num_expr(&mut self, depth: usize) -> String {
        if depth >= 3 || self.chance(0.35) {
            return match self.int(0, 5) {
                0 if !self.scope.strs.is_empty() => {
                    format!("(#{})", self.pick_name(&self.scope.strs.clone()).unwrap())
                }
                1 if !self.scope.seqs.is_empty() => {
                    format!("(#{})", self.pick_name(&self.scope.seqs.clone()).unwrap())
                }
                _ => self.num_operand(),
            };
        }
        let d = depth + 1;
        match self.int(0, 24) {
            0..=3 => {
                let op = self.pick(&["+", "-", "*", "/", "%"]);
                let a = self.num_expr(d);
                let b = self.num_expr(d);
                // Mostly guarded: a zero divisor (an error, or NaN) would end too many programs.
                if matches!(op, "/" | "%") && self.chance(0.85) {
                    format!("({a} {op} nz({b}))")
                } else {
                    format!("({a} {op} {b})")
                }
            }
            4 => format!("({} ^ {})", self.num_expr(d), self.int(0, 3)),
            5 => format!("(- {})", self.num_expr(d)),
            6 => {
                let f = self.pick(&["math.floor", "math.abs", "math.ceil"]);
                format!("{f}({})", self.num_expr(d))
            }
            7 => {
                let f = self.pick(&["math.max", "math.min"]);
                format!("{f}({}, {})", self.num_expr(d), self.num_expr(d))
            }
            8 => {
                let k = if self.chance(0.03) { 0 } else { self.int(1, 4) };
                format!("math.fmod({}, {k})", self.num_expr(d))
            }
            9 => format!("(tonumber({}) or 0)", self.str_expr(d)),
            10 => format!(
                "(string.byte({}, {}) or 0)",
                self.str_expr(d),
                self.int(-2, 3)
            ),
            11 => {
                let a = self.num_expr(d);
                format!("select(\"#\", {a}, nil, {})", self.num_expr(d))
            }
            12 if !self.scope.seqs.is_empty() => {
                let t = self.pick_name(&self.scope.seqs.clone()).unwrap();
                format!("({t}[{}] or 0)", self.int(1, 4))
            }
            13 if !self.scope.funcs.is_empty() => {
                let f = self.pick_name(&self.scope.funcs.clone()).unwrap();
                format!("{f}({})", self.num_expr(d))
            }
            14 if !self.scope.objs.is_empty() => {
                let o = self.pick_name(&self.scope.objs.clone()).unwrap();
                match self.int(0, 4) {
                    0 => format!("({o} + {})", self.num_expr(d)),
                    1 => format!("{o}({})", self.num_expr(d)),
                    2 => format!("(#{o})"),
                    3 => format!("({o}.w or 0)"),
                    _ => format!("val({o})"),
                }
            }
            15 => {
                let c = self.bool_expr(d);
                let a = self.num_expr(d);
                let b = self.num_expr(d);
                format!("({c} and {a} or {b})")
            }
            16 if LUAU => {
                let c = self.bool_expr(d);
                let a = self.num_expr(d);
                let b = self.num_expr(d);
                format!("(if {c} then {a} else {b})")
            }
            17 if FLOOR_DIV => format!("({} // nz({}))", self.num_expr(d), self.num_expr(d)),
            18 if BIT_OPS => {
                let op = self.pick(&["&", "|", "~", "<<", ">>"]);
                let a = self.int_operand();
                let b = self.int_operand();
                format!("({a} {op} {b})")
            }
            19 if LUAJIT => {
                let f = self.pick(&["bit.band", "bit.bor", "bit.bxor", "bit.lshift"]);
                format!("{f}({}, {})", self.int_operand(), self.int(0, 7))
            }
            20 if LUA52 || LUAU => {
                let f = self.pick(&["bit32.band", "bit32.bor", "bit32.bxor", "bit32.lshift"]);
                format!("{f}({}, {})", self.int_operand(), self.int(0, 7))
            }
            21 if LUA53_PLUS => {
                let f = self.pick(&["math.tointeger", "math.ult(1, 2) and math.abs"]);
                format!("({f}({}) or -1)", self.num_expr(d))
            }
            22 if UTF8 => format!("(utf8.len({}) or -1)", self.str_expr(d)),
            23 => format!("(\"{}\" + {})", self.int(0, 20), self.num_expr(d)),
            _ => self.num_operand(),
        }
    }

    /// A number that is an integer and small: a literal, or a length.
    fn int_operand(&mut self) -> String {
        match self.int(0, 2) {
            0 if !self.scope.strs.is_empty() => {
                format!("(#{})", self.pick_name(&self.scope.strs.clone()).unwrap())
            }
            1 if !self.scope.seqs.is_empty() => {
                format!("(#{})", self.pick_name(&self.scope.seqs.clone()).unwrap())
            }
            _ => self.int(0, 300).to_string(),
        }
    }

    fn str_lit(&mut self) -> String {
        format!("\"{}\"", self.pick(STR_LITS))
    }

    /// A string operand usable before `:method(...)` (a literal needs parentheses).
    fn str_receiver(&mut self) -> String {
        let s = self.str_operand();
        if s.starts_with('"') {
            format!("({s})")
        } else {
            s
        }
    }

    /// A string variable or literal (never long: variables are capped).
    fn str_operand(&mut self) -> String {
        if !self.scope.strs.is_empty() && self.chance(0.6) {
            self.pick_name(&self.scope.strs.clone()).unwrap()
        } else {
            self.str_lit()
        }
    }

    fn str_expr(&mut self, depth: usize) -> String {
        if depth >= 3 || self.chance(0.35) {
            return self.str_operand();
        }
        let d = depth + 1;
        match self.int(0, 22) {
            0..=2 => format!("({} .. {})", self.str_expr(d), self.str_expr(d)),
            3 => format!("({} .. {})", self.str_expr(d), self.num_expr(d)),
            4 => format!("tostring({})", self.num_expr(d)),
            5 => {
                let s = self.str_operand();
                match self.int(0, 2) {
                    0 => format!("string.rep({s}, {})", self.int(0, 3)),
                    1 => format!("{}:rep({})", self.str_receiver(), self.int(0, 3)),
                    _ => format!("string.rep({s}, {}, \",\")", self.int(0, 3)),
                }
            }
            6 => {
                let s = self.str_receiver();
                format!("{s}:sub({}, {})", self.int(-4, 3), self.int(-3, 6))
            }
            7 => {
                let f = self.pick(&["upper", "lower", "reverse", "len"]);
                let s = self.str_receiver();
                if f == "len" {
                    format!("tostring({s}:len())")
                } else {
                    format!("string.{f}({s})")
                }
            }
            8 | 9 => self.gsub_expr(d),
            10 => {
                let (pat, _) = self.pick(PATTERNS);
                format!("(string.match({}, \"{pat}\") or \"\")", self.str_operand())
            }
            11 => {
                let (pat, _) = self.pick(PATTERNS);
                let plain = if self.chance(0.3) { ", 1, true" } else { "" };
                format!(
                    "tostring((string.find({}, \"{pat}\"{plain})))",
                    self.str_operand()
                )
            }
            12 => self.format_expr(d),
            13 => format!(
                "string.char(string.byte({}, 1, {}))",
                self.str_operand(),
                self.int(0, 3)
            ),
            14 if !self.scope.seqs.is_empty() => {
                let t = self.pick_name(&self.scope.seqs.clone()).unwrap();
                format!("table.concat({t}, \",\")")
            }
            15 if !self.scope.objs.is_empty() => {
                let o = self.pick_name(&self.scope.objs.clone()).unwrap();
                match self.int(0, 2) {
                    0 => format!("tostring({o})"),
                    1 => format!("({o} .. {})", self.str_operand()),
                    _ => format!("({} .. {o})", self.str_operand()),
                }
            }
            16 => {
                let c = self.bool_expr(d);
                format!("({c} and {} or {})", self.str_expr(d), self.str_expr(d))
            }
            17 if LUAU => format!("`{{{}}}-{{{}}}`", self.str_operand(), self.num_operand()),
            18 if UTF8 => format!("utf8.char(72, {}, 8364)", self.int(97, 300)),
            19 => format!("string.format(\"%q\", {})", self.str_operand()),
            _ => self.str_operand(),
        }
    }

    fn gsub_expr(&mut self, d: usize) -> String {
        let s = self.str_operand();
        let (pat, capture) = self.pick(PATTERNS);
        let repl = match self.int(0, 4) {
            0 => self
                .pick(&["\"%0%0\"", "\"-\"", "\"\"", "\"%%\""])
                .to_owned(),
            1 if capture => "\"<%1>\"".to_owned(),
            2 => "{a = \"A\", l = 3, e = false, h = \"HH\"}".to_owned(),
            3 => "function(c) return c:upper() end".to_owned(),
            _ => "function(c) if c == \"l\" then return nil end return \"[\" .. c .. \"]\" end"
                .to_owned(),
        };
        let max = if self.chance(0.3) {
            format!(", {}", self.int(0, 2))
        } else {
            String::new()
        };
        let _ = d;
        format!("(string.gsub({s}, \"{pat}\", {repl}{max}))")
    }

    fn format_expr(&mut self, d: usize) -> String {
        match self.int(0, 7) {
            0 => format!("string.format(\"%d\", #{})", self.str_operand()),
            1 => format!("string.format(\"%5.2f\", {})", self.num_expr(d)),
            2 => format!(
                "string.format(\"%s|%s\", {}, {})",
                self.str_operand(),
                self.str_operand()
            ),
            3 => format!("string.format(\"%x-%03d\", {0}, {0})", self.int(0, 300)),
            4 => format!("string.format(\"%g\", {})", self.num_expr(d)),
            5 => format!("string.format(\"%-6s|\", {})", self.str_operand()),
            // Luau's `%s` takes strings only.
            6 if !LUAU && !self.scope.objs.is_empty() => {
                let o = self.pick_name(&self.scope.objs.clone()).unwrap();
                format!("string.format(\"%s\", {o})")
            }
            _ => format!("string.format(\"%d\", {})", self.num_expr(d)),
        }
    }

    fn bool_expr(&mut self, depth: usize) -> String {
        let d = depth + 1;
        if depth >= 2 {
            let a = self.num_operand();
            let b = self.num_operand();
            return format!("({a} < {b})");
        }
        match self.int(0, 9) {
            0..=2 => {
                let op = self.pick(&["<", "<=", ">", ">=", "==", "~="]);
                format!("({} {op} {})", self.num_expr(d), self.num_expr(d))
            }
            3 => {
                let op = self.pick(&["<", "==", "~="]);
                format!("({} {op} {})", self.str_expr(d), self.str_expr(d))
            }
            4 => format!("(not {})", self.bool_expr(d)),
            5 => format!("({} and {})", self.bool_expr(d), self.bool_expr(d)),
            6 => format!("({} or {})", self.bool_expr(d), self.bool_expr(d)),
            7 if self.scope.objs.len() >= 2 => {
                let a = self.pick_name(&self.scope.objs.clone()).unwrap();
                let b = self.pick_name(&self.scope.objs.clone()).unwrap();
                let op = self.pick(&["==", "<", "<=", "~="]);
                format!("({a} {op} {b})")
            }
            8 if !self.scope.seqs.is_empty() => {
                let t = self.pick_name(&self.scope.seqs.clone()).unwrap();
                format!("(#{t} > {})", self.int(0, 4))
            }
            _ => self.pick(&["true", "false"]).to_owned(),
        }
    }
}
