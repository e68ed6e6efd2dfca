//! HTTP query strings as the data paths will take them (`session_id=…&vdi=…&format=raw&
//! task_id=…`). The daemon has no query parser of its own yet (no `Query<` in rpc/src), so
//! this fuzzes what it will use: `serde_urlencoded::from_bytes`, which actix-web's
//! `web::Query<T>` calls, into `Vec<(String, String)>`, `HashMap<String, String>` and a
//! struct shaped like the data-path parameters; and `form_urlencoded::parse`. Pairs that
//! parse must serialise and parse back to the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use std::collections::HashMap;

/// The query of `/import_raw_vdi`, `/export_raw_vdi` and friends.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct DataPathQuery {
    session_id: Option<String>,
    vdi: Option<String>,
    format: Option<String>,
    task_id: Option<String>,
    chunked: Option<bool>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_urlencoded::from_bytes::<HashMap<String, String>>(data);
    let _ = serde_urlencoded::from_bytes::<DataPathQuery>(data);
    if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) {
        let text = match serde_urlencoded::to_string(&pairs) {
            Ok(t) => t,
            Err(e) => panic!("pairs {pairs:?} do not serialise: {e}"),
        };
        match serde_urlencoded::from_str::<Vec<(String, String)>>(&text) {
            Ok(back) => assert_eq!(back, pairs, "round trip through {text:?}"),
            Err(e) => panic!("{text:?} does not parse back: {e}"),
        }
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(data)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let text = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish();
    let back: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(back, pairs, "form_urlencoded round trip through {text:?}");
});
