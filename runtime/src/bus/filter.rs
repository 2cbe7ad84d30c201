//! Filters: which of the events on a subscription's topics it wants.
//!
//! A [`Filter`] narrows a subscription past its [`Pattern`](super::Pattern) in two ways, both
//! exact:
//!
//! - **event types**: the event's type name (`Deposited`, or a system event's name such as
//!   `EventStored`) must be one of the listed names, compared byte for byte;
//! - **actor ids**: the actor's id — decoded, as the application wrote it — must match one of the
//!   listed [`IdPattern`]s. An event without an actor (a cluster event) never matches an id
//!   filter.
//!
//! An empty list means "no condition". Both conditions must hold.
//!
//! ```
//! # use aether_runtime::bus::{Filter, IdPattern};
//! let filter = Filter::all()
//!     .event_types(["Deposited", "Withdrew"])
//!     .actor_id(IdPattern::glob("vip-*").unwrap());
//! assert!(IdPattern::glob("vip-*").unwrap().matches("vip-alice"));
//! # let _ = filter;
//! ```

use std::fmt;

use super::BusEvent;

/// An [`IdPattern`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id pattern {pattern:?}: {reason}")]
pub struct IdPatternError {
    /// The rejected pattern.
    pub pattern: String,
    /// Why.
    pub reason: String,
}

/// A pattern over decoded actor ids.
///
/// [`IdPattern::glob`]: `*` matches any run of characters (including none); every other
/// character stands for itself; `\*` is a literal star and `\\` a literal backslash. So
/// `vip-*` matches `vip-` and `vip-alice`, `*@example.com` matches every id ending so, and
/// `order.42` matches exactly `order.42`. [`IdPattern::exact`] matches one id and needs no
/// escaping.
#[derive(Clone, PartialEq, Eq)]
pub struct IdPattern {
    text: String,
    /// The literal pieces between stars; `n` stars make `n + 1` pieces.
    pieces: Vec<String>,
}

impl IdPattern {
    /// Exactly the id `id`.
    pub fn exact(id: impl Into<String>) -> IdPattern {
        let id = id.into();
        let mut text = String::with_capacity(id.len());
        for c in id.chars() {
            if c == '*' || c == '\\' {
                text.push('\\');
            }
            text.push(c);
        }
        IdPattern {
            text,
            pieces: vec![id],
        }
    }

    /// A glob (see the type docs).
    pub fn glob(pattern: &str) -> Result<IdPattern, IdPatternError> {
        let bad = |reason: &str| IdPatternError {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        if pattern.is_empty() {
            return Err(bad("must not be empty (use \"*\" for every id)"));
        }
        let mut pieces = vec![String::new()];
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' => pieces.push(String::new()),
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => push(&mut pieces, e),
                    Some(_) => return Err(bad("'\\' may only escape '*' or '\\'")),
                    None => return Err(bad("ends with a lone '\\'")),
                },
                c => push(&mut pieces, c),
            }
        }
        Ok(IdPattern {
            text: pattern.to_owned(),
            pieces,
        })
    }

    /// The pattern as written (glob syntax).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some(mut tail) = id.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return tail.is_empty(); // no star: exact
        };
        // Leftmost match of each middle piece is optimal for star-only globs.
        for piece in middle {
            match tail.find(piece.as_str()) {
                Some(at) => tail = &tail[at + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

fn push(pieces: &mut [String], c: char) {
    if let Some(last) = pieces.last_mut() {
        last.push(c);
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdPattern({:?})", self.text)
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which events a subscription wants, past its pattern. See the [module docs](self).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Filter {
    event_types: Vec<String>,
    actor_ids: Vec<IdPattern>,
}

impl Filter {
    /// No condition: every event on the pattern's topics.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Also accept events whose type name is one of `types` (adds to the list).
    pub fn event_types<I, S>(mut self, types: I) -> Filter
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for t in types {
            let t = t.into();
            if !self.event_types.contains(&t) {
                self.event_types.push(t);
            }
        }
        self
    }

    /// Also accept events whose actor id matches `pattern` (adds to the list).
    pub fn actor_id(mut self, pattern: IdPattern) -> Filter {
        if !self.actor_ids.contains(&pattern) {
            self.actor_ids.push(pattern);
        }
        self
    }

    /// Adds several id globs at once; fails on the first invalid one.
    pub fn actor_id_globs<I, S>(mut self, globs: I) -> Result<Filter, IdPatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for g in globs {
            self = self.actor_id(IdPattern::glob(g.as_ref())?);
        }
        Ok(self)
    }

    /// The accepted event types (empty: any).
    pub fn types(&self) -> &[String] {
        &self.event_types
    }

    /// The accepted actor id patterns (empty: any actor, and events without one).
    pub fn ids(&self) -> &[IdPattern] {
        &self.actor_ids
    }

    /// Whether the filter has no condition.
    pub fn is_all(&self) -> bool {
        self.event_types.is_empty() && self.actor_ids.is_empty()
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &BusEvent) -> bool {
        self.matches_parts(event.event_type(), event.actor_key().map(|a| a.id.as_str()))
    }

    /// Whether an event of type `event_type` from the actor with id `actor_id` passes.
    pub(crate) fn matches_parts(&self, event_type: &str, actor_id: Option<&str>) -> bool {
        if !self.event_types.is_empty() && !self.event_types.iter().any(|t| t == event_type) {
            return false;
        }
        if self.actor_ids.is_empty() {
            return true;
        }
        actor_id.is_some_and(|id| self.actor_ids.iter().any(|p| p.matches(id)))
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        let mut sep = "";
        if !self.event_types.is_empty() {
            write!(f, "types [{}]", self.event_types.join(", "))?;
            sep = "; ";
        }
        if !self.actor_ids.is_empty() {
            let ids: Vec<&str> = self.actor_ids.iter().map(IdPattern::as_str).collect();
            write!(f, "{sep}ids [{}]", ids.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_exactly() {
        let cases: &[(&str, &str, bool)] = &[
            ("alice", "alice", true),
            ("alice", "alice2", false),
            ("alice", "xalice", false),
            ("vip-*", "vip-", true),
            ("vip-*", "vip-alice", true),
            ("vip-*", "vi", false),
            ("vip-*", "xvip-a", false),
            ("*-eu", "shop-eu", true),
            ("*-eu", "shop-eu-2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("a*b*c", "acb", false),
            ("ab*ab", "ab", false),
            ("ab*ab", "abab", true),
            ("*", "", true),
            ("*", "anything.at all", true),
            ("**", "x", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("a\\\\b", "a\\b", true),
            ("café*", "café-1", true),
            ("*é", "caé", true),
            ("order.*", "order.42", true),
            ("order.*", "order=2E42", false),
        ];
        for (glob, id, want) in cases {
            let p = IdPattern::glob(glob).unwrap();
            assert_eq!(p.matches(id), *want, "{glob:?} vs {id:?}");
        }
    }

    #[test]
    fn exact_needs_no_escaping() {
        let p = IdPattern::exact("a*b\\c");
        assert!(p.matches("a*b\\c"));
        assert!(!p.matches("aXb\\c"));
        assert_eq!(p.as_str(), "a\\*b\\\\c");
        assert_eq!(IdPattern::glob(p.as_str()).unwrap(), p.clone());
    }

    #[test]
    fn bad_globs_say_why() {
        for (glob, why) in [
            ("", "must not be empty"),
            ("a\\", "lone"),
            ("a\\b", "may only escape"),
        ] {
            let e = IdPattern::glob(glob).unwrap_err();
            assert!(e.to_string().contains(why), "{glob:?}: {e}");
        }
    }

    #[test]
    fn filter_conditions_combine() {
        let f = Filter::all()
            .event_types(["Deposited"])
            .actor_id_globs(["a*", "b"])
            .unwrap();
        assert!(f.matches_parts("Deposited", Some("alice")));
        assert!(f.matches_parts("Deposited", Some("b")));
        assert!(!f.matches_parts("Deposited", Some("bob")));
        assert!(!f.matches_parts("Withdrew", Some("alice")));
        assert!(!f.matches_parts("Deposited", None));
        assert!(Filter::all().matches_parts("Anything", None));
        assert_eq!(f.to_string(), "types [Deposited]; ids [a*, b]");
        assert_eq!(Filter::all().to_string(), "all");
    }
}
