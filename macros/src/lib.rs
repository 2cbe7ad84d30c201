//! `#[derive(EventSourcedActor)]` for Aether.
//!
//! Use it through the `aether` crate, which re-exports it:
//!
//! ```ignore
//! #[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
//! #[actor(kind = "account", command = AccountCmd, event = AccountEvent,
//!         reply = AccountReply, error = AccountError, snapshot_every = 500)]
//! pub struct Account { owner: Option<String>, balance: u64 }
//! ```
//!
//! The derive implements `aether::EventSourcedActor` for the state type: its kind name, its
//! command, event, reply and error types, and its snapshot interval. The behaviour (`handle` and
//! `apply`) is written by hand in an `impl Behavior`.
//!
//! Everything that can be checked at compile time is: the kind is a valid name
//! (`[A-Za-z0-9_-]`, 1–64 characters), every key is present once and known, `snapshot_every`
//! is a positive integer, the state is not generic, and the state and the named types have the
//! traits the runtime needs. Errors point at the attribute or the type at fault.
//!
//! This crate depends on no runtime crate: the code it generates names paths in `::aether`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitInt, LitStr, Type, parse_macro_input};

const KEYS: &str = "kind, command, event, reply, error, snapshot_every";

/// Derives `aether::EventSourcedActor`. See the [crate docs](crate).
#[proc_macro_derive(EventSourcedActor, attributes(actor))]
pub fn derive_event_sourced_actor(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

#[derive(Default)]
struct ActorArgs {
    kind: Option<LitStr>,
    command: Option<Type>,
    event: Option<Type>,
    reply: Option<Type>,
    error: Option<Type>,
    snapshot_every: Option<LitInt>,
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str, span: Span) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("`{key}` is given more than once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn check_kind(kind: &LitStr) -> syn::Result<()> {
    let value = kind.value();
    let reason = if value.is_empty() {
        Some("must not be empty".to_owned())
    } else if value.len() > 64 {
        Some("must be at most 64 characters".to_owned())
    } else {
        value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            .map(|c| format!("character {c:?} is not allowed (use A-Z, a-z, 0-9, '_' and '-')"))
    };
    match reason {
        Some(reason) => Err(syn::Error::new(
            kind.span(),
            format!("invalid actor kind {value:?}: {reason}"),
        )),
        None => Ok(()),
    }
}

fn parse_args(input: &DeriveInput) -> syn::Result<(ActorArgs, Span)> {
    let mut attrs = input.attrs.iter().filter(|a| a.path().is_ident("actor"));
    let attr = attrs.next().ok_or_else(|| {
        syn::Error::new(
            input.ident.span(),
            "missing #[actor(...)] attribute: #[actor(kind = \"...\", command = ..., \
             event = ..., reply = ..., error = ...)]",
        )
    })?;
    if let Some(second) = attrs.next() {
        return Err(syn::Error::new(
            second.span(),
            "only one #[actor(...)] attribute is allowed",
        ));
    }
    let mut args = ActorArgs::default();
    attr.parse_nested_meta(|meta| {
        let span = meta.path.span();
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match key.as_str() {
            "kind" => {
                let lit: LitStr = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(e.span(), "`kind` must be a string literal: kind = \"account\"")
                })?;
                check_kind(&lit)?;
                set_once(&mut args.kind, lit, "kind", span)
            }
            "command" => set_once(&mut args.command, meta.value()?.parse()?, "command", span),
            "event" => set_once(&mut args.event, meta.value()?.parse()?, "event", span),
            "reply" => set_once(&mut args.reply, meta.value()?.parse()?, "reply", span),
            "error" => set_once(&mut args.error, meta.value()?.parse()?, "error", span),
            "snapshot_every" => {
                let lit: LitInt = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(e.span(), "`snapshot_every` must be an integer: snapshot_every = 500")
                })?;
                match lit.base10_parse::<u64>() {
                    Ok(n) if n > 0 => set_once(&mut args.snapshot_every, lit, "snapshot_every", span),
                    _ => Err(syn::Error::new(
                        lit.span(),
                        "`snapshot_every` must be a positive integer (leave it out for no periodic snapshots)",
                    )),
                }
            }
            _ => Err(syn::Error::new(
                span,
                format!("unknown key `{key}` in #[actor(...)]; expected one of: {KEYS}"),
            )),
        }
    })?;
    Ok((args, attr.path().span()))
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    if let syn::Data::Union(u) = &input.data {
        return Err(syn::Error::new(
            u.union_token.span,
            "EventSourcedActor cannot be derived for a union; use a struct or an enum",
        ));
    }
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "EventSourcedActor cannot be derived for a generic type: a kind names exactly one state type",
        ));
    }
    let (args, attr_span) = parse_args(input)?;
    let missing = |what: &str, example: &str| {
        syn::Error::new(
            attr_span,
            format!("#[actor(...)] is missing `{what}`: add {example}"),
        )
    };
    let kind = args
        .kind
        .ok_or_else(|| missing("kind", "kind = \"account\""))?;
    let command = args
        .command
        .ok_or_else(|| missing("command", "command = YourCommandType"))?;
    let event = args
        .event
        .ok_or_else(|| missing("event", "event = YourEventType"))?;
    let reply = args
        .reply
        .ok_or_else(|| missing("reply", "reply = YourReplyType"))?;
    let error = args
        .error
        .ok_or_else(|| missing("error", "error = YourErrorType"))?;
    let snapshot_every = match &args.snapshot_every {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let ident = &input.ident;
    // The supertraits of `EventSourcedActor` (Default, Serialize, ...) are checked on this impl;
    // spanning it at the type's name makes a missing trait point there.
    let trait_path = quote_spanned!(ident.span()=> ::aether::EventSourcedActor);
    Ok(quote! {
        impl #trait_path for #ident {
            const KIND: &'static str = #kind;
            const SNAPSHOT_EVERY: ::core::option::Option<u64> = #snapshot_every;
            type Command = #command;
            type Event = #event;
            type Reply = #reply;
            type Error = #error;
        }
    })
}
