//! The book's code, tested: each chapter of `docs/src` is included here as
//! documentation, so `cargo test --doc -p outbox-book` compiles and runs
//! every Rust block of the book against the workspace (blocks marked
//! `no_run` are compiled only; `ignore` ones say why in the chapter).

macro_rules! chapters {
    ($($name:ident = $file:literal),+ $(,)?) => {
        $(
            #[doc = include_str!(concat!("../../src/", $file))]
            mod $name {}
        )+
    };
}

chapters! {
    intro = "intro.md",
    getting_started_native = "getting-started-native.md",
    getting_started_browser = "getting-started-browser.md",
    concepts = "concepts.md",
    stores = "stores.md",
    sinks = "sinks.md",
    operating = "operating.md",
    custom_store = "custom-store.md",
    upgrade = "upgrade.md",
    compatibility = "compatibility.md",
    examples = "examples.md",
    faq = "faq.md",
}
