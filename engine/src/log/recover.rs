//! A shard's log at start: its last segment is checked, a torn tail (the records a crash
//! cut mid-write) is cut off, and writing continues after the last intact record. Never a
//! panic: a segment that cannot be read is left as it is and reported.

use std::path::Path;

use super::format::{HEADER_LEN, Segment, SegmentHeader, Step};

/// Where a shard's log continues.
#[derive(Debug)]
pub struct Recovered {
    pub next_seq: u64,
    /// What was found and done, one line each (cut tails, corrupt records).
    pub report: Vec<String>,
}

pub fn recover(dir: &Path, shard: u32) -> std::io::Result<Recovered> {
    let segments = super::segments(dir, Some(shard))?;
    let mut report = Vec::new();
    let Some((_, named_seq, path)) = segments.last() else {
        return Ok(Recovered {
            next_seq: 1,
            report,
        });
    };
    let bytes = std::fs::read(path)?;
    let shown = path.display();
    let header = match SegmentHeader::decode(&bytes) {
        Ok(h) => h,
        Err(e) => {
            report.push(format!(
                "{shown}: {e}; left as it is, a new segment follows it"
            ));
            // Sequence numbers of whatever intact records it holds still count.
            let s = Segment { bytes: &bytes };
            let mut last = *named_seq;
            let mut at = HEADER_LEN.min(bytes.len());
            while let Some(r) = s.next_valid(at, Some(last)) {
                last = r.seq;
                at = r.offset;
            }
            return Ok(Recovered {
                next_seq: last + 1,
                report,
            });
        }
    };
    let mut last = None;
    let mut torn = None;
    Segment { bytes: &bytes }.walk(None, |step| match step {
        Step::Record(r) => last = Some(r.seq),
        Step::Corrupt { offset, why, .. } => report.push(format!(
            "{shown}: {why} at offset {offset} (corrupt: `verdict log verify` reports it); the records after it are kept"
        )),
        Step::Torn { offset, why } => torn = Some((offset, why)),
    });
    if let Some((offset, why)) = torn {
        let cut = bytes.len() - offset;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(offset as u64)?;
        report.push(format!(
            "{shown}: cut a torn tail of {cut} bytes at offset {offset} ({why})"
        ));
    }
    Ok(Recovered {
        next_seq: last.map_or(header.first_seq, |s| s + 1).max(1),
        report,
    })
}
