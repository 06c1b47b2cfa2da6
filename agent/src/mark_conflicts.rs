//! Other rules that use weft's accept bit.
//!
//! weft's verdict chain clears the accept bit on every packet and sets it
//! on the flows netfilter passed (`verdicts.rs`). A bit another component
//! uses (Calico's policy marks, a mangle rule, a CONNMARK restore) would be
//! overwritten by weft, and weft would overwrite theirs: so while any other
//! rule in the live ruleset sets or tests the bit, weft leaves the mark
//! alone and the fast path records no verdict.
//!
//! Read from `nft -j list ruleset`; rules iptables-nft made with xtables
//! extensions (`-j MARK`, `-j CONNMARK`, `-m mark`) show there only by
//! name, so for those the rule text comes from `iptables-nft-save` and
//! `ip6tables-nft-save`. Rules iptables-legacy holds are not in nftables
//! and cannot be seen (docs/security.md says so).
//!
//! What counts as using the bit:
//! - a `meta mark set` whose value may differ from the old mark in the bit:
//!   `| V`, `^ V` with the bit in V, `& M` without it in M, anything not
//!   built from the old mark and numbers (`ct mark`, a map); an exact value
//!   is taken as using the bits it sets (clearing the others is what every
//!   exact write does, and it happens before weft's chain, which runs last);
//! - a comparison of `meta mark`: `meta mark & M` with the bit in M, or a
//!   bare `meta mark` compared with a value that has the bit, or looked up
//!   in a set or map (any bit);
//! - xtables: `MARK --set-xmark V/M` with the bit in V or M (an exact
//!   `--set-mark V`, printed as `V/0xffffffff`, as above), `CONNMARK
//!   --restore-mark` whose nfmask has the bit, `-m mark --mark V/M` with the
//!   bit in M.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::weft_table::TABLE;

/// One rule that uses the bit, described for the log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict(pub String);

impl Conflict {
    /// The ruleset could not be read (e.g. rules use xtables mark
    /// extensions and `iptables-nft-save` is missing): weft cannot tell the
    /// bit is its own, so this counts as a conflict.
    pub fn unreadable(error: &anyhow::Error) -> Self {
        Self(format!("the ruleset could not be read: {error:#}"))
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every rule of the live ruleset, weft's own table aside, that uses `bit`;
/// a ruleset that cannot be read is one [`Conflict::unreadable`]. Blocking:
/// runs `nft` (and the iptables-nft savers where needed).
pub fn find(bit: u32) -> Vec<Conflict> {
    read_and_find(bit).unwrap_or_else(|error| vec![Conflict::unreadable(&error)])
}

fn read_and_find(bit: u32) -> Result<Vec<Conflict>> {
    let output = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .context("cannot run nft")?;
    if !output.status.success() {
        bail!(
            "nft cannot list the ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let ruleset: Value =
        serde_json::from_slice(&output.stdout).context("nft printed a ruleset that is not JSON")?;
    let mut conflicts = in_nft_json(&ruleset, bit);
    for family in xtables_mark_families(&ruleset) {
        let saver = match family {
            "ip" => "iptables-nft-save",
            _ => "ip6tables-nft-save",
        };
        let output = Command::new(saver)
            .output()
            .with_context(|| format!("cannot run {saver} (rules use xtables mark extensions)"))?;
        if !output.status.success() {
            bail!(
                "{saver} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        conflicts.extend(in_iptables_save(
            &String::from_utf8_lossy(&output.stdout),
            bit,
            saver,
        ));
    }
    conflicts.sort();
    conflicts.dedup();
    Ok(conflicts)
}

/// The rules in an `nft -j list ruleset` listing that use `bit`.
pub fn in_nft_json(ruleset: &Value, bit: u32) -> Vec<Conflict> {
    rules(ruleset)
        .filter(|rule| !is_own(rule))
        .filter(|rule| {
            rule["expr"]
                .as_array()
                .is_some_and(|exprs| exprs.iter().any(|expr| uses_bit(expr, bit)))
        })
        .map(|rule| {
            Conflict(format!(
                "table {} {} chain {} handle {}",
                rule["family"].as_str().unwrap_or("?"),
                rule["table"].as_str().unwrap_or("?"),
                rule["chain"].as_str().unwrap_or("?"),
                rule["handle"]
            ))
        })
        .collect()
}

fn rules(ruleset: &Value) -> impl Iterator<Item = &Value> {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|object| object.get("rule"))
}

fn is_own(rule: &Value) -> bool {
    rule["family"] == "inet" && rule["table"] == TABLE
}

/// The families ("ip", "ip6") with rules that use xtables mark extensions,
/// whose details `nft -j` does not print.
fn xtables_mark_families(ruleset: &Value) -> Vec<&'static str> {
    let mut families = Vec::new();
    for rule in rules(ruleset) {
        let uses_xt_mark = rule["expr"].as_array().is_some_and(|exprs| {
            exprs.iter().any(|expr| {
                expr.get("xt").is_some_and(|xt| {
                    matches!(
                        xt["name"].as_str(),
                        Some("MARK" | "CONNMARK" | "mark" | "connmark")
                    )
                })
            })
        });
        let family = match rule["family"].as_str() {
            Some("ip6") => "ip6",
            _ => "ip",
        };
        if uses_xt_mark && !families.contains(&family) {
            families.push(family);
        }
    }
    families
}

fn is_meta_mark(expr: &Value) -> bool {
    expr.get("meta").is_some_and(|meta| meta["key"] == "mark")
}

/// Whether one statement or expression of a rule uses `bit`.
fn uses_bit(expr: &Value, bit: u32) -> bool {
    if let Some(mangle) = expr.get("mangle") {
        if is_meta_mark(&mangle["key"]) {
            return may_change(&mangle["value"]) & bit != 0;
        }
        return mentions_meta_mark(&mangle["value"]);
    }
    if let Some(comparison) = expr.get("match") {
        return tested_bits(&comparison["left"], &comparison["right"]) & bit != 0;
    }
    mentions_meta_mark(expr)
}

/// The bits in which the value a mark is set to may differ from the old
/// mark.
fn may_change(value: &Value) -> u32 {
    if is_meta_mark(value) {
        return 0;
    }
    if let Some(number) = value.as_u64() {
        // An exact value: taken as using the bits it sets (see the module
        // comment).
        return number as u32;
    }
    let binary = |op: &str| {
        value[op]
            .as_array()
            .filter(|operands| operands.len() == 2)
            .map(|operands| (&operands[0], operands[1].as_u64().map(|n| n as u32)))
    };
    if let Some((left, Some(constant))) = binary("|") {
        return may_change(left) | constant;
    }
    if let Some((left, Some(constant))) = binary("^") {
        return may_change(left) | constant;
    }
    if let Some((left, Some(constant))) = binary("&") {
        return may_change(left) | !constant;
    }
    u32::MAX
}

/// The bits a comparison with `left` on its left side reads from the mark.
fn tested_bits(left: &Value, right: &Value) -> u32 {
    if is_meta_mark(left) {
        // Compared with a value, or with a set of values: taken as reading
        // the bits the values have; a map, range or anything else: any bit.
        if let Some(number) = right.as_u64() {
            return number as u32;
        }
        if let Some(elements) = right["set"].as_array() {
            return elements.iter().fold(0, |bits, element| {
                bits | element.as_u64().map_or(u32::MAX, |number| number as u32)
            });
        }
        return u32::MAX;
    }
    if let Some(operands) = left["&"].as_array()
        && operands.len() == 2
        && is_meta_mark(&operands[0])
    {
        return operands[1].as_u64().map_or(u32::MAX, |mask| mask as u32);
    }
    if mentions_meta_mark(left) {
        u32::MAX
    } else {
        0
    }
}

/// Whether `meta mark` appears anywhere inside (a map key, a concatenation).
fn mentions_meta_mark(value: &Value) -> bool {
    is_meta_mark(value)
        || match value {
            Value::Array(items) => items.iter().any(mentions_meta_mark),
            Value::Object(fields) => fields.values().any(mentions_meta_mark),
            _ => false,
        }
}

/// The rules in an `iptables-nft-save` listing that use `bit`.
pub fn in_iptables_save(text: &str, bit: u32, saver: &str) -> Vec<Conflict> {
    let mut table = "";
    text.lines()
        .filter_map(|line| {
            if let Some(name) = line.strip_prefix('*') {
                table = name;
                return None;
            }
            let rule = line.strip_prefix("-A ")?;
            let words: Vec<&str> = rule.split_whitespace().collect();
            iptables_rule_uses_bit(&words, bit)
                .then(|| Conflict(format!("{saver} -t {table} -A {rule}")))
        })
        .collect()
}

fn iptables_rule_uses_bit(words: &[&str], bit: u32) -> bool {
    let after = |option: &str| -> Vec<&str> {
        words
            .windows(2)
            .filter(|pair| pair[0] == option)
            .map(|pair| pair[1])
            .collect()
    };
    let target = after("-j").first().copied().unwrap_or("");
    let matches = after("-m");
    let mut uses = false;
    if target == "MARK" {
        for value in after("--set-xmark") {
            let (value, mask) = value_and_mask(value);
            // An exact --set-mark is printed as V/0xffffffff.
            let changed = if mask == u32::MAX {
                value
            } else {
                value | mask
            };
            uses |= changed & bit != 0;
        }
    }
    if target == "CONNMARK" && words.contains(&"--restore-mark") {
        let nfmask = after("--nfmask")
            .first()
            .map_or(u32::MAX, |mask| parse_number(mask));
        uses |= nfmask & bit != 0;
    }
    if matches.contains(&"mark") {
        for value in after("--mark") {
            let (value, mask) = value_and_mask(value);
            let tested = if mask == u32::MAX { value } else { mask };
            uses |= tested & bit != 0;
        }
    }
    uses
}

/// `V/M` or `V` (mask all ones).
fn value_and_mask(text: &str) -> (u32, u32) {
    match text.split_once('/') {
        Some((value, mask)) => (parse_number(value), parse_number(mask)),
        None => (parse_number(text), u32::MAX),
    }
}

/// A number as iptables prints it; unreadable counts as every bit, so a
/// rule weft cannot read is taken as a conflict.
fn parse_number(text: &str) -> u32 {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
