//! `meshrev inject`'s document reader, walker and YAML writer: any input gives output or an
//! error, never a panic. The output must read back as YAML with one document per input
//! document, and every document that was read must survive a write/read round trip.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use meshrev::table::Table;

static TABLE: LazyLock<Table> = LazyLock::new(meshrev::table::embedded_default);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The YAML writer: what was read is written and read back unchanged.
    for doc in meshrev::yaml::documents(text) {
        let Ok(doc) = doc else { break };
        let written = meshrev::yaml::to_string(&doc);
        let back = meshrev::yaml::from_str(&written)
            .unwrap_or_else(|e| panic!("written YAML must read back: {e}\n{written}"));
        assert_eq!(back, doc, "round trip changed the document:\n{written}");
    }
    let labels = HashMap::from([("istio-injection".to_string(), "enabled".to_string())]);
    if let Ok((out, _notes)) = meshrev::cli::inject_documents(&TABLE, text, None, Some(&labels)) {
        let docs = meshrev::yaml::documents(&out)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("the output must be YAML: {e}\n{out}"));
        let inputs = meshrev::yaml::documents(text)
            .filter(|d| !matches!(d, Ok(serde_json::Value::Null)))
            .count();
        assert_eq!(docs.len(), inputs, "{out}");
    }
});
