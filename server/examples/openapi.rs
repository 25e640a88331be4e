//! Prints the gateway's OpenAPI document (the same one `GET /api/v1/openapi.json` serves).
//!
//! `cargo run -p pile-server --example openapi > openapi.json`

fn main() {
    match serde_json::to_string_pretty(&pile_server::http::openapi_document()) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("cannot serialise the document: {e}");
            std::process::exit(1);
        }
    }
}
