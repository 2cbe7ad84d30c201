//! Topics and subject patterns: what a subscription names.
//!
//! Every message on the bus has a **topic**, a dot-separated name that starts with its
//! namespace:
//!
//! | topic | what |
//! |---|---|
//! | `<ns>.events.<kind>.<encoded-id>` | an event stored by actor `<kind>/<id>` (the same subject the JetStream store keeps it under) |
//! | `<ns>.system.<Name>` | a system event: `EventStored`, `VersionConflict`, `SnapshotCreated`, `SubscriptionCreated`, the cluster's `NodeJoined`, `LeaderElected`, ... |
//!
//! The id token is the id's reversible encoding ([`ActorId::encoded`]): `order.42` becomes
//! `order=2E42`. To select ids by their *decoded* text (prefixes, suffixes), use an
//! [`IdPattern`](super::IdPattern) in the [`Filter`](super::Filter) instead.
//!
//! A [`Pattern`] selects topics with NATS semantics: `*` matches exactly one token, `>` matches
//! one or more tokens and may only come last. Patterns are checked when parsed, so a typo is an
//! error instead of a subscription that silently never matches:
//!
//! - the namespace token is a valid namespace, `*` or `>`;
//! - the second token is `events`, `system`, `*` or `>`;
//! - a literal kind is a valid kind, a literal id token is a valid encoded id, a literal system
//!   event name is letters only;
//! - a pattern has at most four tokens (`events` topics have four, `system` topics three), and at
//!   least three unless it ends with `>`.
//!
//! A pattern whose namespace token is `*` or `>` spans namespaces; the bus accepts it only
//! through the explicit [`Bus::subscribe_all_namespaces`](super::Bus::subscribe_all_namespaces).

use std::fmt;
use std::sync::Arc;

use crate::names::{ActorId, ActorKey, Kind, NameKind, Namespace, validate_name};

/// The second token of an actor event's topic.
pub(crate) const EVENTS: &str = "events";
/// The second token of a system event's topic.
pub(crate) const SYSTEM: &str = "system";

/// A pattern was rejected. The message shows the pattern and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The rejected pattern.
    pub pattern: String,
    /// Why it was rejected.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens; always last.
    Rest,
}

/// A parsed subject pattern over bus topics. See the [module docs](self).
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Arc<str>,
    tokens: Box<[Token]>,
}

impl Pattern {
    /// Parses and checks `text` (see the [module docs](self) for the rules).
    pub fn parse(text: impl AsRef<str>) -> Result<Pattern, PatternError> {
        let text = text.as_ref();
        let bad = |reason: String| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("must not be empty".into()));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "" => return Err(bad(format!("token {} is empty", i + 1))),
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => return Err(bad("'>' may only be the last token".into())),
                p if p.contains(['*', '>']) => {
                    return Err(bad(format!(
                        "token {p:?} mixes a wildcard with text ('*' and '>' stand alone)"
                    )));
                }
                p if p.chars().any(char::is_whitespace) => {
                    return Err(bad(format!("token {p:?} contains whitespace")));
                }
                p => Token::Literal(p.into()),
            };
            tokens.push(token);
        }
        check_shape(&tokens).map_err(bad)?;
        Ok(Pattern {
            text: Arc::from(text),
            tokens: tokens.into_boxed_slice(),
        })
    }

    /// `<ns>.>`: everything of one namespace, actor events and system events.
    pub fn namespace(namespace: &Namespace) -> Pattern {
        Pattern::known(format!("{namespace}.>"))
    }

    /// `<ns>.events.>`: every actor event of one namespace.
    pub fn events(namespace: &Namespace) -> Pattern {
        Pattern::known(format!("{namespace}.{EVENTS}.>"))
    }

    /// `<ns>.events.<kind>.*`: every event of actors of one kind.
    pub fn kind_events(namespace: &Namespace, kind: &Kind) -> Pattern {
        Pattern::known(format!("{namespace}.{EVENTS}.{kind}.*"))
    }

    /// `<ns>.events.<kind>.<encoded-id>`: the events of one actor.
    pub fn actor_events(actor: &ActorKey) -> Pattern {
        Pattern::known(events_topic(actor))
    }

    /// `<ns>.system.>`: every system event of one namespace.
    pub fn system(namespace: &Namespace) -> Pattern {
        Pattern::known(format!("{namespace}.{SYSTEM}.>"))
    }

    /// A pattern built from validated parts (cannot fail).
    fn known(text: String) -> Pattern {
        Pattern::parse(&text).unwrap_or_else(|e| {
            // Names are validated, so this is unreachable; keep a pattern that matches nothing
            // rather than panic in library code.
            debug_assert!(false, "{e}");
            Pattern {
                text: Arc::from(text),
                tokens: Box::new([]),
            }
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The namespace the pattern is confined to; `None` when its namespace token is a
    /// wildcard.
    pub fn namespace_name(&self) -> Option<&str> {
        match self.tokens.first() {
            Some(Token::Literal(ns)) => Some(ns),
            _ => None,
        }
    }

    /// Whether the pattern can match topics of more than one namespace.
    pub fn spans_namespaces(&self) -> bool {
        self.namespace_name().is_none()
    }

    /// Whether the pattern can match actor-event topics (`<ns>.events...`), the only ones kept
    /// in the event store.
    pub fn can_match_events(&self) -> bool {
        match self.tokens.get(1) {
            None => matches!(self.tokens.first(), Some(Token::Rest)),
            Some(Token::Literal(family)) => &**family == EVENTS,
            Some(_) => true,
        }
    }

    /// Whether `topic` matches the pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in self.tokens.iter() {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(lit) => {
                    if parts.next() != Some(&**lit) {
                        return false;
                    }
                }
            }
        }
        !self.tokens.is_empty() && parts.next().is_none()
    }

    /// The pattern with its namespace token replaced: `prefix(ns)` + the rest. Used to map bus
    /// topics onto other subject spaces (the live NATS subjects).
    pub(crate) fn map_namespace(&self, mut prefix: impl FnMut(&str) -> String) -> String {
        let mut parts = self.text.split('.');
        match parts.next() {
            // `>` alone: every namespace, every family.
            Some(">") => format!("{}.>", prefix("*")),
            Some(first) => {
                let mut out = prefix(first);
                for p in parts {
                    out.push('.');
                    out.push_str(p);
                }
                out
            }
            None => prefix("*"),
        }
    }
}

/// Checks the token structure (see the module docs).
fn check_shape(tokens: &[Token]) -> Result<(), String> {
    let ends_with_rest = matches!(tokens.last(), Some(Token::Rest));
    if tokens.len() > 4 {
        return Err(format!(
            "{} tokens is too many: topics are <ns>.events.<kind>.<id> or <ns>.system.<Name>",
            tokens.len()
        ));
    }
    if tokens.len() < 3 && !ends_with_rest {
        return Err(
            "too few tokens: topics are <ns>.events.<kind>.<id> or <ns>.system.<Name> (end with '>' to match the rest)"
                .into(),
        );
    }
    if let Some(Token::Literal(ns)) = tokens.first() {
        validate_name(NameKind::Namespace, ns).map_err(|e| e.to_string())?;
    }
    let family = match tokens.get(1) {
        Some(Token::Literal(f)) if &**f == EVENTS || &**f == SYSTEM => Some(&**f),
        Some(Token::Literal(f)) => {
            return Err(format!(
                "unknown topic family {f:?} (expected {EVENTS:?} or {SYSTEM:?})"
            ));
        }
        _ => None,
    };
    if family == Some(SYSTEM) {
        if tokens.len() > 3 {
            return Err("system topics have three tokens: <ns>.system.<Name>".into());
        }
        if let Some(Token::Literal(name)) = tokens.get(2)
            && !name.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(format!(
                "system event name {name:?} must be letters only (for example EventStored)"
            ));
        }
    } else {
        // `events`, or a wildcard family (which can still match events).
        // (System event names are letters, so they pass as kinds under a wildcard family.)
        if let Some(Token::Literal(kind)) = tokens.get(2) {
            validate_name(NameKind::Kind, kind).map_err(|e| e.to_string())?;
        }
        if let Some(Token::Literal(id)) = tokens.get(3) {
            ActorId::decode(id).map_err(|e| {
                format!("{e} (ids are written encoded in patterns: see ActorId::encoded)")
            })?;
        }
    }
    Ok(())
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Pattern, PatternError> {
        Pattern::parse(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = PatternError;
    fn try_from(s: &str) -> Result<Pattern, PatternError> {
        Pattern::parse(s)
    }
}

/// The topic of an actor's events: `<ns>.events.<kind>.<encoded-id>`.
pub(crate) fn events_topic(actor: &ActorKey) -> String {
    let mut out = String::with_capacity(
        actor.namespace.as_str().len() + actor.kind.as_str().len() + actor.id.as_str().len() + 9,
    );
    out.push_str(actor.namespace.as_str());
    out.push('.');
    out.push_str(EVENTS);
    out.push('.');
    out.push_str(actor.kind.as_str());
    out.push('.');
    out.push_str(&actor.id.encoded());
    out
}

/// The topic of a system event: `<ns>.system.<name>`.
pub(crate) fn system_topic(namespace: &Namespace, name: &str) -> String {
    format!("{namespace}.{SYSTEM}.{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn nats_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "bank.events.account.alice",
                "bank.events.account.alice",
                true,
            ),
            (
                "bank.events.account.alice",
                "bank.events.account.bob",
                false,
            ),
            ("bank.events.account.*", "bank.events.account.bob", true),
            ("bank.events.account.*", "bank.events.order.bob", false),
            ("bank.events.*.bob", "bank.events.order.bob", true),
            ("bank.events.>", "bank.events.order.bob", true),
            ("bank.events.>", "bank.system.EventStored", false),
            ("bank.>", "bank.system.EventStored", true),
            ("bank.>", "bank2.system.EventStored", false),
            ("bank.*.>", "bank.system.EventStored", true),
            ("bank.system.*", "bank.system.EventStored", true),
            ("bank.system.*", "bank.events.account.a", false),
            ("*.events.>", "shop.events.order.o1", true),
            (">", "shop.events.order.o1", true),
            (">", "shop.system.NodeJoined", true),
            ("bank.events.account.*", "bank.events.account", false),
            ("bank.events.account.*", "bank.events.account.a.b", false),
            ("bank.*.account.*", "bank.events.account.a", true),
        ];
        for (pattern, topic, want) in cases {
            assert_eq!(p(pattern).matches(topic), *want, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("bank..account", "token 2 is empty"),
            ("bank.>.x", "'>' may only be the last token"),
            ("bank.events.acc*", "mixes a wildcard"),
            ("bank.events.a b.x", "whitespace"),
            ("ba nk.>", "whitespace"),
            ("bank.evnts.>", "unknown topic family \"evnts\""),
            ("bank.events.account.a.b", "5 tokens is too many"),
            ("bank.events", "too few tokens"),
            (
                "bank.system.Event.Stored",
                "system topics have three tokens",
            ),
            ("bank.system.Event1", "letters only"),
            ("bank.events.account.a=2", "encoded"),
            ("b@nk.>", "invalid namespace"),
            ("bank.events.k@nd.*", "invalid kind"),
        ];
        for (pattern, want) in cases {
            let e = Pattern::parse(pattern).unwrap_err();
            assert!(e.to_string().contains(want), "{pattern}: {e}");
            assert_eq!(e.pattern, *pattern);
        }
    }

    #[test]
    fn helpers_build_valid_patterns() {
        let ns = Namespace::new("bank").unwrap();
        let actor = ActorKey::new(
            ns.clone(),
            Kind::new("account").unwrap(),
            ActorId::new("a.b c").unwrap(),
        );
        assert_eq!(Pattern::events(&ns).as_str(), "bank.events.>");
        assert_eq!(Pattern::namespace(&ns).as_str(), "bank.>");
        assert_eq!(Pattern::system(&ns).as_str(), "bank.system.>");
        assert_eq!(
            Pattern::actor_events(&actor).as_str(),
            "bank.events.account.a=2Eb=20c"
        );
        assert!(Pattern::actor_events(&actor).matches(&events_topic(&actor)));
        assert!(
            Pattern::kind_events(&ns, &actor.kind).matches(&events_topic(&actor)),
            "kind pattern"
        );
        assert_eq!(system_topic(&ns, "EventStored"), "bank.system.EventStored");
    }

    #[test]
    fn namespace_scope() {
        assert_eq!(p("bank.>").namespace_name(), Some("bank"));
        assert!(!p("bank.>").spans_namespaces());
        assert!(p("*.events.>").spans_namespaces());
        assert!(p(">").spans_namespaces());
        assert!(p("bank.events.>").can_match_events());
        assert!(p("bank.>").can_match_events());
        assert!(p(">").can_match_events());
        assert!(!p("bank.system.>").can_match_events());
    }

    #[test]
    fn map_namespace_keeps_the_rest() {
        let live = |s: &str| p(s).map_namespace(|ns| format!("aether.{ns}.bus"));
        assert_eq!(live("bank.events.>"), "aether.bank.bus.events.>");
        assert_eq!(live("*.system.*"), "aether.*.bus.system.*");
        assert_eq!(live(">"), "aether.*.bus.>");
        assert_eq!(live("bank.>"), "aether.bank.bus.>");
    }
}
