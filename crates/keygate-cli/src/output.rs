//! Human tables by default, raw JSON with `--json`.

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::Value;

pub fn print(value: &Value, json: bool, columns: &[&str]) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        return;
    }
    match value.get("data").and_then(Value::as_array) {
        Some(rows) => {
            print_table(rows, columns);
            if let Some(cursor) = value.get("next_cursor").and_then(Value::as_str) {
                println!("More: --cursor {cursor}");
            }
        }
        None => print_record(value),
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items.iter().map(|i| cell(Some(i))).collect::<Vec<_>>().join(", "),
        Some(other) => other.to_string(),
    }
}

fn print_table(rows: &[Value], columns: &[&str]) {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(columns.iter().map(|c| c.to_uppercase()));
    for row in rows {
        table.add_row(columns.iter().map(|c| cell(row.get(*c))));
    }
    println!("{table}");
}

fn print_record(value: &Value) {
    let Some(object) = value.as_object() else {
        println!("{value}");
        return;
    };
    let width = object.keys().map(String::len).max().unwrap_or(0);
    for (name, field) in object {
        println!("{name:<width$}  {}", cell(Some(field)));
    }
}
