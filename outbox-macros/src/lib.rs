#![doc = include_str!("../README.md")]

use proc_macro::{Delimiter, Group, Punct, Spacing, TokenStream, TokenTree};

/// `async_trait` with the target's `Send`-ness: `#[async_trait]` natively,
/// `#[async_trait(?Send)]` on wasm32; explicit arguments are kept.
#[proc_macro_attribute]
pub fn async_trait(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut out = TokenStream::new();
    if args.is_empty() {
        out.extend(attribute(r#"cfg_attr(not(target_arch = "wasm32"), ::outbox::__private::async_trait)"#));
        out.extend(attribute(r#"cfg_attr(target_arch = "wasm32", ::outbox::__private::async_trait(?Send))"#));
    } else {
        out.extend(attribute(&format!("::outbox::__private::async_trait({args})")));
    }
    out.extend(item);
    out
}

/// `#[inner]`.
fn attribute(inner: &str) -> TokenStream {
    let inner: TokenStream = inner.parse().unwrap_or_default();
    let mut t = TokenStream::new();
    t.extend([
        TokenTree::Punct(Punct::new('#', Spacing::Alone)),
        TokenTree::Group(Group::new(Delimiter::Bracket, inner)),
    ]);
    t
}
