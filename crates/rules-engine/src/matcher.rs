//! Match expressions: compiled from the wire form once, evaluated against
//! [`Facts`] without allocating (but for globs on non-ASCII text).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use bootfleet_proto::v1::{Condition, Match, condition, r#match};

use crate::error::RulesError;
use crate::facts::{Facts, Field, parse_mac};

/// Deepest nesting accepted, so a hostile expression cannot blow the stack.
const MAX_DEPTH: usize = 32;

/// A shell-style pattern: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<GlobToken>,
    /// Every character of the pattern is ASCII: ASCII text can then be
    /// matched byte by byte without decoding or allocating.
    ascii: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GlobToken {
    Literal(char),
    AnyOne,
    AnyRun,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl Glob {
    /// Compiles a pattern; an unclosed `[` is an error.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => GlobToken::AnyRun,
                '?' => GlobToken::AnyOne,
                '[' => {
                    let negated = chars.next_if(|c| *c == '!' || *c == '^').is_some();
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        if c == ']' && !ranges.is_empty() {
                            closed = true;
                            break;
                        }
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(']') | None => {
                                    ranges.push((c, c));
                                    ranges.push(('-', '-'));
                                    closed = true;
                                    break;
                                }
                                Some(end) => ranges.push((c, end)),
                            }
                        } else {
                            ranges.push((c, c));
                        }
                    }
                    if !closed {
                        return Err(format!("{pattern:?}: unclosed '['"));
                    }
                    GlobToken::Class { negated, ranges }
                }
                other => GlobToken::Literal(other),
            });
        }
        Ok(Self { tokens, ascii: pattern.is_ascii() })
    }

    /// Whether the pattern has no wildcard (then it is a plain equality).
    pub fn literal(&self) -> Option<String> {
        self.tokens
            .iter()
            .map(|t| match t {
                GlobToken::Literal(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// The literal text every match starts with ("rack1-" for "rack1-*").
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                GlobToken::Literal(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Matches the whole of `text` (iterative, with backtracking to the last
    /// `*` only: linear in practice, no exponential blow-up).
    pub fn matches(&self, text: &str) -> bool {
        if self.ascii && text.is_ascii() {
            self.match_units(text.as_bytes(), |b| char::from(*b))
        } else {
            self.match_units(&text.chars().collect::<Vec<char>>(), |c| *c)
        }
    }

    fn match_units<U>(&self, text: &[U], to_char: impl Fn(&U) -> char) -> bool {
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            let step = match self.tokens.get(p) {
                Some(GlobToken::AnyRun) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(GlobToken::AnyOne) => true,
                Some(GlobToken::Literal(c)) => *c == to_char(&text[t]),
                Some(GlobToken::Class { negated, ranges }) => {
                    let c = to_char(&text[t]);
                    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
                }
                None => false,
            };
            if step {
                t += 1;
                p += 1;
            } else if let Some((star_p, star_t)) = star {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            } else {
                return false;
            }
        }
        self.tokens[p..].iter().all(|t| *t == GlobToken::AnyRun)
    }
}

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub network: u32,
    /// Prefix length, 0-32.
    pub prefix: u8,
}

impl Cidr {
    /// Parses "a.b.c.d/n"; host bits set in the address are an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) =
            text.split_once('/').ok_or_else(|| format!("{text:?} is not a CIDR like 198.18.0.0/15"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("/{len} is not a prefix length 0-32"))?;
        let network = u32::from(addr);
        let cidr = Self { network: network & Self::mask(prefix), prefix };
        if cidr.network != network {
            return Err(format!(
                "{text:?} has host bits set (network is {}/{prefix})",
                Ipv4Addr::from(cidr.network)
            ));
        }
        Ok(cidr)
    }

    /// The netmask of a prefix length.
    pub fn mask(prefix: u8) -> u32 {
        if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
    }

    /// Whether `address` is inside.
    pub fn contains(&self, address: u32) -> bool {
        address & Self::mask(self.prefix) == self.network
    }
}

/// A compiled test on one field.
#[derive(Clone, Debug)]
pub enum Test {
    /// Exact value.
    Equals(String),
    /// One of several values.
    In(HashSet<String>),
    /// Shell pattern.
    Glob(Glob),
    /// Address inside a network.
    Cidr(Cidr),
    /// MAC between two MACs, inclusive.
    MacRange(u64, u64),
    /// Integer between two integers, inclusive.
    NumberRange(u128, u128),
    /// String between two strings, inclusive (byte order).
    TextRange(String, String),
}

/// A compiled match expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// Every item holds (true when empty).
    All(Vec<Self>),
    /// Some item holds (false when empty).
    Any(Vec<Self>),
    /// The item does not hold.
    Not(Box<Self>),
    /// A test on a fact.
    Cond(Field, Test),
    /// Always true.
    Always,
}

impl Expr {
    /// Evaluates against facts. A test on a fact the host did not report is
    /// false (so `not` of it is true).
    pub fn eval(&self, facts: &Facts) -> bool {
        match self {
            Self::All(items) => items.iter().all(|e| e.eval(facts)),
            Self::Any(items) => items.iter().any(|e| e.eval(facts)),
            Self::Not(item) => !item.eval(facts),
            Self::Always => true,
            Self::Cond(field, test) => {
                let Some(value) = facts.get(field) else { return false };
                match test {
                    Test::Equals(want) => value == want,
                    Test::In(set) => set.contains(value),
                    Test::Glob(glob) => glob.matches(value),
                    Test::Cidr(cidr) => facts.address(field).is_some_and(|a| cidr.contains(a)),
                    Test::MacRange(lo, hi) => (*lo..=*hi).contains(&facts.mac_value),
                    Test::NumberRange(lo, hi) => {
                        value.parse::<u128>().is_ok_and(|v| (*lo..=*hi).contains(&v))
                    }
                    Test::TextRange(lo, hi) => lo.as_str() <= value && value <= hi.as_str(),
                }
            }
        }
    }
}

impl Expr {
    /// Evaluates against facts of which only the fields `known` accepts
    /// are known (three-valued: `None` when the outcome depends on an
    /// unknown field). With every field known it is [`Self::eval`].
    pub fn eval_partial(&self, facts: &Facts, known: &dyn Fn(&Field) -> bool) -> Option<bool> {
        match self {
            Self::All(items) => {
                let mut unknown = false;
                for item in items {
                    match item.eval_partial(facts, known) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                (!unknown).then_some(true)
            }
            Self::Any(items) => {
                let mut unknown = false;
                for item in items {
                    match item.eval_partial(facts, known) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                (!unknown).then_some(false)
            }
            Self::Not(item) => item.eval_partial(facts, known).map(|v| !v),
            Self::Always => Some(true),
            Self::Cond(field, _) if !known(field) => None,
            Self::Cond(..) => Some(self.eval(facts)),
        }
    }
}

/// Normalizes a literal for comparison with a normalized fact.
fn normalize_value(field: &Field, value: &str, path: &str) -> Result<String, RulesError> {
    Ok(match field {
        Field::Mac => crate::facts::normalize_mac(value)
            .map_err(|_| RulesError::invalid(path, format!("{value:?} is not a MAC address")))?,
        Field::Uuid | Field::Arch => value.trim().to_ascii_lowercase(),
        Field::Ipv4 | Field::Relay => {
            let addr: Ipv4Addr = value
                .trim()
                .parse()
                .map_err(|_| RulesError::invalid(path, format!("{value:?} is not an IPv4 address")))?;
            addr.to_string()
        }
        _ => value.to_owned(),
    })
}

fn compile_condition(c: &Condition, path: &str) -> Result<Expr, RulesError> {
    let field = Field::parse(&c.field).ok_or_else(|| {
        RulesError::invalid(
            format!("{path}.field"),
            format!("unknown field {:?} (known: {})", c.field, Field::NAMES),
        )
    })?;
    let test = match &c.test {
        None => {
            return Err(RulesError::invalid(path, "condition has no test (equals, in, glob, cidr or range)"));
        }
        Some(condition::Test::Equals(v)) => {
            Test::Equals(normalize_value(&field, v, &format!("{path}.equals"))?)
        }
        Some(condition::Test::In(set)) => {
            if set.values.is_empty() {
                return Err(RulesError::invalid(format!("{path}.in"), "empty set matches nothing"));
            }
            let values = set
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| normalize_value(&field, v, &format!("{path}.in[{i}]")))
                .collect::<Result<_, _>>()?;
            Test::In(values)
        }
        Some(condition::Test::Glob(pattern)) => {
            let pattern = if matches!(field, Field::Mac | Field::Uuid | Field::Arch) {
                pattern.to_ascii_lowercase()
            } else {
                pattern.clone()
            };
            let glob = Glob::new(&pattern).map_err(|m| RulesError::invalid(format!("{path}.glob"), m))?;
            match glob.literal() {
                Some(literal) => Test::Equals(normalize_value(&field, &literal, &format!("{path}.glob"))?),
                None => Test::Glob(glob),
            }
        }
        Some(condition::Test::Cidr(text)) => {
            if !field.is_address() {
                return Err(RulesError::invalid(
                    format!("{path}.cidr"),
                    format!("cidr applies to ipv4 or relay, not {}", c.field),
                ));
            }
            Test::Cidr(Cidr::parse(text).map_err(|m| RulesError::invalid(format!("{path}.cidr"), m))?)
        }
        Some(condition::Test::Range(range)) => {
            let at = format!("{path}.range");
            if field == Field::Mac {
                let parse = |v: &str| {
                    parse_mac(v)
                        .ok_or_else(|| RulesError::invalid(&at, format!("{v:?} is not a MAC address")))
                };
                let (lo, hi) = (parse(&range.from)?, parse(&range.to)?);
                if lo > hi {
                    return Err(RulesError::invalid(at, "from is above to"));
                }
                Test::MacRange(lo, hi)
            } else if let (Ok(lo), Ok(hi)) = (range.from.parse::<u128>(), range.to.parse::<u128>()) {
                if lo > hi {
                    return Err(RulesError::invalid(at, "from is above to"));
                }
                Test::NumberRange(lo, hi)
            } else {
                if range.from > range.to {
                    return Err(RulesError::invalid(at, "from is above to"));
                }
                Test::TextRange(range.from.clone(), range.to.clone())
            }
        }
    };
    Ok(Expr::Cond(field, test))
}

/// Compiles a match expression; errors name the path below `path`.
pub fn compile(m: &Match, path: &str) -> Result<Expr, RulesError> {
    compile_at(m, path, 0)
}

fn compile_at(m: &Match, path: &str, depth: usize) -> Result<Expr, RulesError> {
    if depth > MAX_DEPTH {
        return Err(RulesError::invalid(path, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let list = |items: &[Match], name: &str| -> Result<Vec<Expr>, RulesError> {
        items
            .iter()
            .enumerate()
            .map(|(i, item)| compile_at(item, &format!("{path}.{name}[{i}]"), depth + 1))
            .collect()
    };
    Ok(match &m.expr {
        None => return Err(RulesError::invalid(path, "empty match (use always: true for a catch-all)")),
        Some(r#match::Expr::All(l)) => Expr::All(list(&l.items, "all")?),
        Some(r#match::Expr::Any(l)) => Expr::Any(list(&l.items, "any")?),
        Some(r#match::Expr::Not(inner)) => {
            Expr::Not(Box::new(compile_at(inner, &format!("{path}.not"), depth + 1)?))
        }
        Some(r#match::Expr::Condition(c)) => compile_condition(c, path)?,
        Some(r#match::Expr::Always(true)) => Expr::Always,
        Some(r#match::Expr::Always(false)) => {
            return Err(RulesError::invalid(
                format!("{path}.always"),
                "always: false never matches; remove the rule",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        let cases = [
            ("52:54:00:*", "52:54:00:12:34:56", true),
            ("52:54:00:*", "52:54:01:12:34:56", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.example.com", "node1.example.com", true),
            ("node[0-9][0-9]", "node42", true),
            ("node[0-9][0-9]", "node4x", false),
            ("node[!0-9]", "nodex", true),
            ("node[!0-9]", "node1", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            ("[-a]", "-", true),
            ("a*", "b", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(Glob::new(pattern).unwrap().matches(text), want, "{pattern} ~ {text}");
        }
        assert!(Glob::new("node[0-9").is_err());
        assert_eq!(Glob::new("plain").unwrap().literal().as_deref(), Some("plain"));
        assert_eq!(Glob::new("pl*n").unwrap().literal(), None);
    }

    #[test]
    fn pathological_globs_stay_fast() {
        let glob = Glob::new(&"*a".repeat(20)).unwrap();
        assert!(!glob.matches(&"a".repeat(19)));
    }

    #[test]
    fn cidrs_parse_strictly() {
        let c = Cidr::parse("198.18.0.0/15").unwrap();
        assert!(c.contains(u32::from(Ipv4Addr::new(198, 19, 255, 1))));
        assert!(!c.contains(u32::from(Ipv4Addr::new(198, 20, 0, 1))));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(12345));
        for bad in ["198.18.0.1/15", "198.18.0.0", "198.18.0.0/33", "x/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
