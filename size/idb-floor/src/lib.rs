//! The floor: a bare indexed_db_futures write (open a database, put one
//! value in a readwrite transaction, commit). Measured by
//! `scripts/wasm-size.sh`.

/// Opens `name` and writes one value.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub async fn start(name: String) -> Result<(), wasm_bindgen::JsValue> {
    use indexed_db_futures::database::Database;
    use indexed_db_futures::prelude::*;
    use indexed_db_futures::transaction::TransactionMode;
    let err = |e: indexed_db_futures::error::Error| wasm_bindgen::JsValue::from_str(&e.to_string());
    let db = Database::open(name.as_str())
        .with_version(1u32)
        .with_on_upgrade_needed(|_, db| {
            db.create_object_store("kv").build()?;
            Ok(())
        })
        .await
        .map_err(|e| wasm_bindgen::JsValue::from_str(&e.to_string()))?;
    let tx = db.transaction("kv").with_mode(TransactionMode::Readwrite).build().map_err(err)?;
    let st = tx.object_store("kv").map_err(err)?;
    st.put("value").with_key("key").primitive().map_err(err)?.await.map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(())
}
