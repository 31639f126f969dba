//! How much a conversion from Lua may produce.
//!
//! A Lua value can be far larger converted than it is in the VM: a table reached twice is
//! converted twice, so a chain of `t = { t, t }` forty levels deep, a few kilobytes in Lua,
//! would expand to 2^40 values, and a 1 MiB string referenced a thousand times to a gigabyte.
//! Such a conversion runs in Rust, where neither the VM's memory limit nor an interrupt
//! reaches it. Likewise a table with a length converts as a sequence of that many values,
//! and the length of a sparse table can be 2^40 with a few dozen entries. So before
//! converting, the value is walked as the conversion would walk it,
//! counting what it would produce, and refused past a budget: the walk stops there too. The
//! walk also looks at the running request's cancel and deadline (every thousand entries or
//! so), so that a large value does not hold a stopped request past its grace period.

use std::ffi::c_void;

use mlua::Value;

/// The most a conversion may produce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Table entries (a table reached twice counts twice).
    entries: usize,
    /// Bytes of strings (a string reached twice counts twice).
    bytes: usize,
}

impl Budget {
    /// For values a request returns or takes ([`Serde`](super::Serde)): 262 144 table entries
    /// and 16 MiB of strings.
    pub(crate) const VALUE: Budget = Budget {
        entries: 1 << 18,
        bytes: 16 << 20,
    };

    /// For the table a request failed with: ten thousand entries and 1 MiB of strings.
    pub(crate) const ERROR: Budget = Budget {
        entries: 10_000,
        bytes: 1 << 20,
    };
}

/// Walks `value` as a conversion with depth limit `depth` would, and refuses it (with a
/// message) if it would produce more than `budget`. Tables deeper than `depth`, and tables met
/// again inside themselves, are not entered: the conversion refuses or skips those itself.
/// Reads raw (no metamethod runs).
pub(crate) fn check(value: &Value, depth: usize, budget: Budget) -> Result<(), String> {
    let mut left = budget;
    let mut path = Vec::new();
    walk(value, depth, &mut path, &mut left).map_err(|stop| match stop {
        Stop::Exceeded => format!(
            "the value would convert to more than {} table entries or {} bytes of strings",
            budget.entries, budget.bytes
        ),
        Stop::Interrupted(err) => err.to_string(),
    })
}

/// Why a walk ended early.
enum Stop {
    Exceeded,
    /// The request was cancelled or passed its deadline meanwhile.
    Interrupted(crate::error::IsleError),
}

/// How many entries the walk takes between two looks at the request's cancel and deadline.
const ENTRIES_PER_CHECKPOINT: usize = 1024;

fn walk(
    value: &Value,
    depth: usize,
    path: &mut Vec<*const c_void>,
    left: &mut Budget,
) -> Result<(), Stop> {
    match value {
        Value::String(s) => {
            left.bytes = left
                .bytes
                .checked_sub(s.as_bytes().len())
                .ok_or(Stop::Exceeded)?;
        }
        #[cfg(feature = "luau")]
        Value::Buffer(buffer) => {
            left.bytes = left.bytes.checked_sub(buffer.len()).ok_or(Stop::Exceeded)?;
        }
        Value::Table(table) if depth > 0 => {
            let me = table.to_pointer();
            if path.contains(&me) {
                return Ok(());
            }
            path.push(me);
            // A table with a length converts as a sequence of that many values, holes
            // included: `{ [1] = 1, [2] = 1, [4] = 1, ..., [2^40] = 1 }` has 41 entries and a
            // length of 2^40.
            left.entries = left
                .entries
                .checked_sub(table.raw_len())
                .ok_or(Stop::Exceeded)?;
            for pair in table.pairs::<Value, Value>() {
                let Ok((key, value)) = pair else {
                    continue;
                };
                left.entries = left.entries.checked_sub(1).ok_or(Stop::Exceeded)?;
                if left.entries.is_multiple_of(ENTRIES_PER_CHECKPOINT) {
                    crate::checkpoint().map_err(Stop::Interrupted)?;
                }
                walk(&key, depth - 1, path, left)?;
                walk(&value, depth - 1, path, left)?;
            }
            path.pop();
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    fn value(lua: &Lua, code: &str) -> Value {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn shared_tables_and_strings_count_once_per_reference() {
        let lua = Lua::new();
        let small = Budget {
            entries: 250,
            bytes: 1000,
        };
        // Each non-empty table counts its length (2) and its entries (2): 5 levels are
        // 4 * (1 + 2 + 4 + 8 + 16) = 124, 6 levels 252.
        let chain = |levels| {
            value(
                &lua,
                &format!("local t = {{}} for i = 1, {levels} do t = {{ t, t }} end return t"),
            )
        };
        assert!(check(&chain(5), 128, small).is_ok());
        assert!(check(&chain(6), 128, small).is_err());
        assert!(check(&chain(60), 128, Budget::VALUE).is_err());
        let strings = value(&lua, "local s = ('x'):rep(300) return { s, s, s }");
        assert!(check(&strings, 128, small).is_ok());
        let strings = value(&lua, "local s = ('x'):rep(300) return { s, s, s, s }");
        assert!(check(&strings, 128, small).is_err());
    }

    #[test]
    fn a_length_counts_as_that_many_entries() {
        let lua = Lua::new();
        let keys: Vec<String> = (0..=40).map(|i| format!("[{}] = 1", 1u64 << i)).collect();
        let sparse = value(&lua, &format!("return {{ {} }}", keys.join(", ")));
        let len = match &sparse {
            Value::Table(t) => t.raw_len(),
            _ => unreachable!(),
        };
        if len > Budget::VALUE.entries {
            assert!(check(&sparse, 128, Budget::VALUE).is_err());
        }
        let dense = value(
            &lua,
            "local t = {} for i = 1, 1000 do t[i] = i end return t",
        );
        let small = Budget {
            entries: 1500,
            bytes: 0,
        };
        // 1000 for the length, 1000 for the entries.
        assert!(check(&dense, 128, small).is_err());
        let small = Budget {
            entries: 2000,
            bytes: 0,
        };
        assert!(check(&dense, 128, small).is_ok());
    }

    #[test]
    fn cycles_and_depth_end_the_walk_without_spending_the_budget() {
        let lua = Lua::new();
        let cycle = value(&lua, "local t = { 1 } t.self = t t.again = { t } return t");
        assert!(check(&cycle, 128, Budget::ERROR).is_ok());
        let deep = value(
            &lua,
            "local t = {} for i = 1, 1e5 do t = { t } end return t",
        );
        assert!(check(&deep, 128, Budget::ERROR).is_ok());
    }

    #[test]
    fn the_walk_reads_raw() {
        let lua = Lua::new();
        let guarded = value(
            &lua,
            "return setmetatable({ 1 }, { __pairs = function() error('ran') end, \
             __index = function() error('ran') end })",
        );
        assert!(check(&guarded, 128, Budget::ERROR).is_ok());
    }
}
