//! `verdict log export --format parquet`: the decisions as a Parquet file with flat columns,
//! through arrow-rs, so pyarrow, duckdb or Spark read them without verdict.
//!
//! Columns: the event's fields (`event_id`, `timestamp_ms`, `account_id`, `merchant_id`,
//! `amount_minor`, `currency`, `country`, `channel`, `device_id`, `ip`, `mcc`, `features`
//! as a list of doubles, `attributes` as JSON text), the decision (`action`, `score`,
//! `rules` and `shadow_rules` as lists of strings, `model_errors`), one `model.<name>`
//! column per model and one `velocity.<function>` column per velocity function seen in the
//! log (null where a decision's epoch had no such model or function), and where it was made
//! (`epoch`, `digest`, `shard`, `seq`, `logged_at_ms`). Two passes over the log: the first
//! finds the model and velocity columns, the second writes row groups of
//! [`ROWS_PER_GROUP`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

/// Rows buffered before a row group is written.
pub const ROWS_PER_GROUP: usize = 65_536;

const STRINGS: [&str; 8] = [
    "event_id",
    "account_id",
    "merchant_id",
    "currency",
    "country",
    "channel",
    "device_id",
    "ip",
];

struct Columns {
    strings: Vec<StringBuilder>,
    timestamp_ms: Int64Builder,
    amount_minor: Int64Builder,
    mcc: Int32Builder,
    features: ListBuilder<Float64Builder>,
    attributes: StringBuilder,
    action: StringBuilder,
    score: Int32Builder,
    rules: ListBuilder<StringBuilder>,
    shadow_rules: ListBuilder<StringBuilder>,
    model_errors: ListBuilder<StringBuilder>,
    models: Vec<(String, Float64Builder)>,
    velocity: Vec<(String, Float64Builder)>,
    epoch: Int64Builder,
    digest: StringBuilder,
    shard: Int32Builder,
    seq: Int64Builder,
    logged_at_ms: Int64Builder,
    rows: usize,
}

impl Columns {
    fn new(models: &BTreeSet<String>, velocity: &BTreeSet<String>) -> Columns {
        Columns {
            strings: STRINGS.iter().map(|_| StringBuilder::new()).collect(),
            timestamp_ms: Int64Builder::new(),
            amount_minor: Int64Builder::new(),
            mcc: Int32Builder::new(),
            features: ListBuilder::new(Float64Builder::new()),
            attributes: StringBuilder::new(),
            action: StringBuilder::new(),
            score: Int32Builder::new(),
            rules: ListBuilder::new(StringBuilder::new()),
            shadow_rules: ListBuilder::new(StringBuilder::new()),
            model_errors: ListBuilder::new(StringBuilder::new()),
            models: models
                .iter()
                .map(|m| (m.clone(), Float64Builder::new()))
                .collect(),
            velocity: velocity
                .iter()
                .map(|v| (v.clone(), Float64Builder::new()))
                .collect(),
            epoch: Int64Builder::new(),
            digest: StringBuilder::new(),
            shard: Int32Builder::new(),
            seq: Int64Builder::new(),
            logged_at_ms: Int64Builder::new(),
            rows: 0,
        }
    }

    fn schema(&self) -> Arc<Schema> {
        let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
        let mut fields: Vec<Field> = STRINGS
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect();
        fields.extend([
            Field::new("timestamp_ms", DataType::Int64, true),
            Field::new("amount_minor", DataType::Int64, true),
            Field::new("mcc", DataType::Int32, true),
            Field::new("features", list(DataType::Float64), true),
            Field::new("attributes", DataType::Utf8, true),
            Field::new("action", DataType::Utf8, false),
            Field::new("score", DataType::Int32, false),
            Field::new("rules", list(DataType::Utf8), false),
            Field::new("shadow_rules", list(DataType::Utf8), false),
            Field::new("model_errors", list(DataType::Utf8), false),
        ]);
        fields.extend(
            self.models
                .iter()
                .map(|(n, _)| Field::new(format!("model.{n}"), DataType::Float64, true)),
        );
        fields.extend(
            self.velocity
                .iter()
                .map(|(n, _)| Field::new(format!("velocity.{n}"), DataType::Float64, true)),
        );
        fields.extend([
            Field::new("epoch", DataType::Int64, false),
            Field::new("digest", DataType::Utf8, true),
            Field::new("shard", DataType::Int32, false),
            Field::new("seq", DataType::Int64, false),
            Field::new("logged_at_ms", DataType::Int64, false),
        ]);
        Arc::new(Schema::new(fields))
    }

    fn push(&mut self, row: &Value) {
        for (name, b) in STRINGS.iter().zip(&mut self.strings) {
            b.append_option(row[*name].as_str());
        }
        self.timestamp_ms
            .append_option(row["timestamp_ms"].as_i64());
        self.amount_minor
            .append_option(row["amount_minor"].as_i64());
        self.mcc
            .append_option(row["mcc"].as_i64().map(|x| x as i32));
        match row["features"].as_array() {
            Some(xs) => {
                for x in xs {
                    self.features.values().append_option(x.as_f64());
                }
                self.features.append(true);
            }
            None => self.features.append(false),
        }
        self.attributes
            .append_option(row.get("attributes").map(|a| a.to_string()));
        self.action
            .append_value(row["action"].as_str().unwrap_or(""));
        self.score
            .append_value(row["score"].as_i64().unwrap_or(0) as i32);
        for (b, key) in [
            (&mut self.rules, "rules"),
            (&mut self.shadow_rules, "shadow_rules"),
            (&mut self.model_errors, "model_errors"),
        ] {
            for name in row[key].as_array().into_iter().flatten() {
                b.values().append_value(name.as_str().unwrap_or(""));
            }
            b.append(true);
        }
        for (name, b) in &mut self.models {
            b.append_option(row["models"][name.as_str()].as_f64());
        }
        for (name, b) in &mut self.velocity {
            b.append_option(row["velocity"][name.as_str()].as_f64());
        }
        self.epoch.append_value(row["epoch"].as_i64().unwrap_or(0));
        self.digest.append_option(row["digest"].as_str());
        self.shard
            .append_value(row["shard"].as_i64().unwrap_or(0) as i32);
        self.seq.append_value(row["seq"].as_i64().unwrap_or(0));
        self.logged_at_ms
            .append_value(row["logged_at_ms"].as_i64().unwrap_or(0));
        self.rows += 1;
    }

    /// The rows so far as a batch (the builders start over).
    fn batch(&mut self, schema: &Arc<Schema>) -> anyhow::Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.timestamp_ms.finish()));
        columns.push(Arc::new(self.amount_minor.finish()));
        columns.push(Arc::new(self.mcc.finish()));
        columns.push(Arc::new(self.features.finish()));
        columns.push(Arc::new(self.attributes.finish()));
        columns.push(Arc::new(self.action.finish()));
        columns.push(Arc::new(self.score.finish()));
        columns.push(Arc::new(self.rules.finish()));
        columns.push(Arc::new(self.shadow_rules.finish()));
        columns.push(Arc::new(self.model_errors.finish()));
        columns.extend(
            self.models
                .iter_mut()
                .map(|(_, b)| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(
            self.velocity
                .iter_mut()
                .map(|(_, b)| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.epoch.finish()));
        columns.push(Arc::new(self.digest.finish()));
        columns.push(Arc::new(self.shard.finish()));
        columns.push(Arc::new(self.seq.finish()));
        columns.push(Arc::new(self.logged_at_ms.finish()));
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), columns).context("building a record batch")
    }
}

/// Writes every row `rows` calls back with (it is called twice: the columns, then the
/// data) to a Parquet file at `out`; returns the rows written.
pub fn export(
    _dir: &Path,
    out: &Path,
    rows: impl Fn(&mut dyn FnMut(&Value) -> anyhow::Result<()>) -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    let (mut models, mut velocity) = (BTreeSet::new(), BTreeSet::new());
    rows(&mut |row| {
        for (set, key) in [(&mut models, "models"), (&mut velocity, "velocity")] {
            if let Some(o) = row[key].as_object() {
                set.extend(o.keys().cloned());
            }
        }
        Ok(())
    })?;
    let mut columns = Columns::new(&models, &velocity);
    let schema = columns.schema();
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
    let written = rows(&mut |row| {
        columns.push(row);
        if columns.rows >= ROWS_PER_GROUP {
            writer.write(&columns.batch(&schema)?)?;
        }
        Ok(())
    })?;
    if columns.rows > 0 {
        writer.write(&columns.batch(&schema)?)?;
    }
    writer.close()?;
    Ok(written)
}
