//! `#[derive(EventSourcedActor)]` for Aether.
//!
//! Use it through the `aether` crate, which re-exports it:
//!
//! ```ignore
//! #[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
//! #[actor(kind = "account", event = AccountEvent, error = AccountError,
//!         commands(Open -> (), Deposit -> u64, Balance -> u64), snapshot_every = 500)]
//! pub struct Account { owner: Option<String>, balance: u64 }
//! ```
//!
//! The derive implements `aether::EventSourcedActor` for the state type: its kind name, its
//! event and error types, its snapshot interval, the version of its state schema
//! (`state_version = N`, 0 when left out; see `Behavior::migrate_state`), the version of its
//! event schema (`event_version = N`, 0 when left out; see `Behavior::upcast_event`), and its
//! commands with the reply type of each.
//! For `commands(...)` it generates the actor's wire types — an enum `<State>Command` with one
//! variant per command type and an enum `<State>Reply` with one variant per reply — and
//! implements `aether::Command<State>` for every command type, so `ask(Deposit(5))` returns a
//! `u64`, checked at compile time. The single-type form `command = AccountCmd, reply = u64`
//! takes one command type (typically an enum) that answers with one reply type.
//!
//! The behaviour is written by hand: one `impl Handle<Deposit> for Account` per command type,
//! and `impl Behavior for Account` with the fold (`apply`).
//!
//! Everything that can be checked at compile time is: the kind is a valid name
//! (`[A-Za-z0-9_-]`, 1–64 characters), every key is present once and known, `snapshot_every`
//! is a positive integer, `state_version` and `event_version` fit a `u32`, the state is not generic, the command types are distinct, and the
//! state and the named types have the traits the runtime needs. Errors point at the attribute
//! or the type at fault.
//!
//! This crate depends on no runtime crate: the code it generates names paths in the `aether`
//! crate, under the name the user's `Cargo.toml` gives it (it may be renamed).
//!
//! [`macro@data`] makes a command, event, error or state type serializable through `aether`'s
//! re-export of serde, so the user's crate needs no serde dependency.

#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, LitInt, LitStr, Path, Token, Type, parse_macro_input};

const KEYS: &str =
    "kind, commands, command, reply, event, error, snapshot_every, state_version, event_version";

/// One `Command -> Reply` of `commands(...)`.
struct CommandSpec {
    command: Path,
    reply: Type,
}

impl syn::parse::Parse for CommandSpec {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        let command: Path = input.parse()?;
        input.parse::<Token![->]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `->` and the reply type: commands(Deposit -> u64, Balance -> u64)",
            )
        })?;
        let reply: Type = input.parse()?;
        Ok(CommandSpec { command, reply })
    }
}

/// Derives `aether::EventSourcedActor`. See the [crate docs](crate).
#[proc_macro_derive(EventSourcedActor, attributes(actor))]
pub fn derive_event_sourced_actor(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Makes a type storable and sendable by Aether: derives serde's `Serialize` and
/// `Deserialize` through `aether`'s own re-export of serde, so a crate that uses Aether needs
/// no `serde` dependency of its own. Put it above your other derives and attributes
/// (`#[serde(...)]` attributes work as usual):
///
/// ```ignore
/// #[aether::data]
/// #[derive(Debug, Clone)]
/// pub struct Deposit(pub u64);
/// ```
#[proc_macro_attribute]
pub fn data(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = proc_macro2::TokenStream::from(args);
        return syn::Error::new(args.span(), "#[aether::data] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = proc_macro2::TokenStream::from(item);
    let krate = aether_path();
    let serde_path = format!("{krate}::serde").replace(' ', "");
    quote! {
        #[derive(#krate::serde::Serialize, #krate::serde::Deserialize)]
        #[serde(crate = #serde_path)]
        #item
    }
    .into()
}

/// The path of the `aether` crate as the user's crate names it: `::aether`, or the name it is
/// renamed to in the user's `Cargo.toml` (`actors = { package = "aether", ... }`).
fn aether_path() -> proc_macro2::TokenStream {
    use proc_macro_crate::{FoundCrate, crate_name};
    match crate_name("aether") {
        Ok(FoundCrate::Name(name)) => {
            let ident = Ident::new(&name, Span::call_site());
            quote!(::#ident)
        }
        // `Itself`: an example, test or doc test of the `aether` package, which sees it as
        // `aether` (the library never uses its own derive). Not found: the user's Cargo.toml
        // could not be read; `aether` is the best guess and a wrong one fails loudly.
        Ok(FoundCrate::Itself) | Err(_) => quote!(::aether),
    }
}

#[derive(Default)]
struct ActorArgs {
    kind: Option<LitStr>,
    commands: Option<(Span, Vec<CommandSpec>)>,
    command: Option<Type>,
    event: Option<Type>,
    reply: Option<Type>,
    error: Option<Type>,
    snapshot_every: Option<LitInt>,
    state_version: Option<LitInt>,
    event_version: Option<LitInt>,
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

/// The value of a schema version key (`state_version = 2`): an integer that fits a `u32`.
fn version(meta: &syn::meta::ParseNestedMeta, key: &str) -> syn::Result<LitInt> {
    let lit: LitInt = meta
        .value()?
        .parse()
        .map_err(|e| syn::Error::new(e.span(), format!("`{key}` must be an integer: {key} = 2")))?;
    lit.base10_parse::<u32>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!("`{key}` must be a non-negative integer that fits in a u32"),
        )
    })?;
    Ok(lit)
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
            "missing #[actor(...)] attribute: #[actor(kind = \"...\", event = ..., \
             error = ..., commands(YourCommand -> YourReply, ...))]",
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
            "commands" => {
                let content;
                syn::parenthesized!(content in meta.input);
                let specs = Punctuated::<CommandSpec, Token![,]>::parse_terminated(&content)?;
                if specs.is_empty() {
                    return Err(syn::Error::new(
                        span,
                        "`commands(...)` lists at least one command: commands(Deposit -> u64)",
                    ));
                }
                set_once(
                    &mut args.commands,
                    (span, specs.into_iter().collect()),
                    "commands",
                    span,
                )
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
            "state_version" => {
                let lit = version(&meta, "state_version")?;
                set_once(&mut args.state_version, lit, "state_version", span)
            }
            "event_version" => {
                let lit = version(&meta, "event_version")?;
                set_once(&mut args.event_version, lit, "event_version", span)
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
    let event = args
        .event
        .ok_or_else(|| missing("event", "event = YourEventType"))?;
    let error = args
        .error
        .ok_or_else(|| missing("error", "error = YourErrorType"))?;
    let snapshot_every = match &args.snapshot_every {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let state_version = match &args.state_version {
        Some(lit) => quote!(#lit),
        None => quote!(0),
    };
    let event_version = match &args.event_version {
        Some(lit) => quote!(#lit),
        None => quote!(0),
    };
    let ident = &input.ident;
    let krate = aether_path();
    let commands = match (args.commands, args.command, args.reply) {
        (Some(_), Some(command), _) => {
            return Err(syn::Error::new(
                command.span(),
                "give either `commands(A -> ReplyA, ...)` or `command = ..., reply = ...`, not both",
            ));
        }
        (Some(_), None, Some(reply)) => {
            return Err(syn::Error::new(
                reply.span(),
                "with `commands(...)` each command names its reply (`Deposit -> u64`); remove `reply`",
            ));
        }
        (Some((_, specs)), None, None) => Commands::Many(specs),
        (None, Some(command), Some(reply)) => Commands::One { command, reply },
        (None, Some(_), None) => return Err(missing("reply", "reply = YourReplyType")),
        (None, None, _) => {
            return Err(missing(
                "commands",
                "commands(Deposit -> u64, Balance -> u64) (or command = YourCommand, reply = YourReply)",
            ));
        }
    };
    let vis = &input.vis;
    // The supertraits of `EventSourcedActor` (Default, Serialize, ...) are checked on this impl;
    // spanning it at the type's name makes a missing trait point there.
    let trait_path = quote_spanned!(ident.span()=> #krate::EventSourcedActor);
    let (wire, command, reply, dispatch) = match commands {
        Commands::One { command, reply } => {
            let wire = quote! {
                impl #krate::Command<#ident> for #command {
                    type Reply = #reply;
                    #[inline]
                    fn into_command(self) -> #command {
                        self
                    }
                    #[inline]
                    fn from_reply(reply: #reply) -> ::core::option::Option<#reply> {
                        ::core::option::Option::Some(reply)
                    }
                }
            };
            let dispatch = quote! {
                <Self as #krate::Handle<#command>>::handle(self, cmd, ctx)
            };
            (wire, quote!(#command), quote!(#reply), dispatch)
        }
        Commands::Many(specs) => many(&krate, ident, vis, &specs)?,
    };
    Ok(quote! {
        #wire

        impl #trait_path for #ident {
            const KIND: &'static str = #kind;
            const SNAPSHOT_EVERY: ::core::option::Option<u64> = #snapshot_every;
            const STATE_VERSION: u32 = #state_version;
            const EVENT_VERSION: u32 = #event_version;
            type Command = #command;
            type Event = #event;
            type Reply = #reply;
            type Error = #error;

            #[allow(clippy::manual_async_fn)]
            fn dispatch(
                &self,
                cmd: #command,
                ctx: &mut #krate::Ctx<Self>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<#krate::Effect<Self>, #error>,
            > + ::core::marker::Send
            where
                Self: #krate::Behavior,
            {
                #dispatch
            }
        }
    })
}

#[allow(clippy::large_enum_variant)] // built once per derive
enum Commands {
    One { command: Type, reply: Type },
    Many(Vec<CommandSpec>),
}

/// The wire enums, the `Command` impls and the dispatch of `commands(...)`.
fn many(
    krate: &proc_macro2::TokenStream,
    ident: &Ident,
    vis: &syn::Visibility,
    specs: &[CommandSpec],
) -> syn::Result<(
    proc_macro2::TokenStream,
    proc_macro2::TokenStream,
    proc_macro2::TokenStream,
    proc_macro2::TokenStream,
)> {
    let command_enum = Ident::new(&format!("{ident}Command"), ident.span());
    let reply_enum = Ident::new(&format!("{ident}Reply"), ident.span());
    let mut variants: Vec<&Ident> = Vec::with_capacity(specs.len());
    for spec in specs {
        let last = spec
            .command
            .segments
            .last()
            .ok_or_else(|| syn::Error::new(spec.command.span(), "expected a command type"))?;
        if !last.arguments.is_empty() {
            return Err(syn::Error::new(
                last.arguments.span(),
                "a command type cannot be generic: name one concrete type per command",
            ));
        }
        if variants.iter().any(|v| **v == last.ident) {
            return Err(syn::Error::new(
                last.ident.span(),
                format!(
                    "command `{}` is listed twice (command type names must differ)",
                    last.ident
                ),
            ));
        }
        variants.push(&last.ident);
    }
    let commands: Vec<&Path> = specs.iter().map(|s| &s.command).collect();
    let replies: Vec<&Type> = specs.iter().map(|s| &s.reply).collect();
    let command_doc = format!(
        "Every command of [`{ident}`], as it travels and is stored (generated by \
         `#[derive(EventSourcedActor)]`)."
    );
    let reply_doc = format!(
        "Every reply of [`{ident}`], tagged with its command, as it travels and is stored \
         (generated by `#[derive(EventSourcedActor)]`)."
    );
    let serde_path = LitStr::new(&format!("{krate}::serde").replace(' ', ""), ident.span());
    let wire = quote! {
        #[doc = #command_doc]
        #[derive(#krate::serde::Serialize, #krate::serde::Deserialize)]
        #[serde(crate = #serde_path)]
        #vis enum #command_enum {
            #(
                #[allow(missing_docs)]
                #variants(#commands),
            )*
        }

        #[doc = #reply_doc]
        #[derive(#krate::serde::Serialize, #krate::serde::Deserialize)]
        #[serde(crate = #serde_path)]
        #vis enum #reply_enum {
            #(
                #[allow(missing_docs)]
                #variants(#replies),
            )*
        }

        impl #krate::Command<#ident> for #command_enum {
            type Reply = #reply_enum;
            #[inline]
            fn into_command(self) -> #command_enum {
                self
            }
            #[inline]
            fn from_reply(reply: #reply_enum) -> ::core::option::Option<#reply_enum> {
                ::core::option::Option::Some(reply)
            }
        }

        #(
            impl #krate::Command<#ident> for #commands {
                type Reply = #replies;
                #[inline]
                fn into_command(self) -> #command_enum {
                    #command_enum::#variants(self)
                }
                #[inline]
                #[allow(unreachable_patterns)]
                fn from_reply(reply: #reply_enum) -> ::core::option::Option<#replies> {
                    match reply {
                        #reply_enum::#variants(reply) => ::core::option::Option::Some(reply),
                        _ => ::core::option::Option::None,
                    }
                }
            }
        )*
    };
    let dispatch = quote! {
        async move {
            match cmd {
                #(
                    #command_enum::#variants(cmd) => {
                        <Self as #krate::Handle<#commands>>::handle(self, cmd, ctx)
                            .await
                            .map(|effect| effect.map_reply(#reply_enum::#variants))
                    }
                )*
            }
        }
    };
    Ok((wire, quote!(#command_enum), quote!(#reply_enum), dispatch))
}
