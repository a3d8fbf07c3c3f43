//! `verdict log verify DIR` and `verdict log export DIR`: reading a decision log without a
//! running engine.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::log::{self, read};

/// Checks every segment of every shard in `dir`: prints one line per segment and one per
/// problem; exit 1 if anything is wrong beyond a torn tail.
pub fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let segments =
        log::segments(dir, None).with_context(|| format!("reading {}", dir.display()))?;
    anyhow::ensure!(
        !segments.is_empty(),
        "{} holds no decision log segments",
        dir.display()
    );
    let (mut failed, mut records, mut torn) = (false, 0u64, 0usize);
    let mut last: Option<(u32, u64)> = None;
    for (shard, _, path) in &segments {
        let before = last.filter(|(s, _)| s == shard).map(|(_, seq)| seq);
        let c = read::check(path, before)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match &c.header {
            Err(e) => println!("{name}: BAD HEADER: {e}"),
            Ok(_) => println!(
                "{name}: shard {shard}, {} records, seq {}..{}",
                c.records,
                c.first_seq.map_or("-".into(), |s| s.to_string()),
                c.last_seq.map_or("-".into(), |s| s.to_string())
            ),
        }
        for (offset, why, resumed) in &c.corrupt {
            println!(
                "  CORRUPT at offset {offset}: {why}; intact records resume at offset {resumed}"
            );
        }
        for (offset, seq) in &c.out_of_order {
            println!(
                "  OUT OF ORDER at offset {offset}: sequence {seq} is not above the one before"
            );
        }
        if let Some((offset, bytes)) = c.torn {
            println!(
                "  torn tail at offset {offset}: {bytes} bytes (a crash mid-write; cut at the next start)"
            );
            torn += 1;
        }
        failed |= c.failed();
        records += c.records;
        if let Some(seq) = c.last_seq {
            last = Some((*shard, seq));
        }
    }
    println!(
        "{} segments, {records} records, {torn} torn tails: {}",
        segments.len(),
        if failed { "CORRUPT" } else { "ok" }
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Calls `f` with every decision's row (every shard, each shard's in sequence order) whose
/// event time is within `from..=to` (ms since the Unix epoch).
fn each_row(
    dir: &Path,
    from: Option<u64>,
    to: Option<u64>,
    mut f: impl FnMut(&serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let segments =
        log::segments(dir, None).with_context(|| format!("reading {}", dir.display()))?;
    let mut rows = 0u64;
    let mut shard_rows: Option<(u32, read::Rows)> = None;
    for (shard, _, path) in &segments {
        if shard_rows.as_ref().is_none_or(|(s, _)| s != shard) {
            shard_rows = Some((*shard, read::Rows::default()));
        }
        let (_, decoder) = shard_rows.as_mut().expect("set above");
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for r in read::records(&bytes) {
            let Some(row) = decoder.row(&r) else { continue };
            let t = row["timestamp_ms"].as_u64();
            if from.is_some_and(|f| t.is_none_or(|t| t < f))
                || to.is_some_and(|l| t.is_none_or(|t| t > l))
            {
                continue;
            }
            f(&row)?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// Writes one row per decision whose event time is within `from..=to`: JSON lines, or a
/// Parquet file with flat columns.
pub fn export(
    dir: &Path,
    format: &str,
    out: &Path,
    from: Option<u64>,
    to: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let rows = match format {
        "jsonl" => {
            let file = std::fs::File::create(out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let rows = each_row(dir, from, to, |row| {
                serde_json::to_writer(&mut w, row)?;
                w.write_all(b"\n")?;
                Ok(())
            })?;
            w.flush()?;
            rows
        }
        "parquet" => super::parquet::export(dir, out, |f| each_row(dir, from, to, f))?,
        other => anyhow::bail!("--format {other}: the formats are jsonl and parquet"),
    };
    eprintln!("verdict log export: {rows} decisions to {}", out.display());
    Ok(ExitCode::SUCCESS)
}
