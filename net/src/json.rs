//! The JSON forms used by `verdict send` and friends. Field names are fixed:
//!
//! event: `event_id, timestamp_ms, account_id, merchant_id, amount_minor, currency, country,
//! channel, device_id, ip, mcc` and optional `features` (array of numbers) and `attributes`
//! (object of string / number / bool). Ids may be given as strings or integers; `ip` may be
//! `null` or `""` for unknown (sent as `0.0.0.0`); `mcc` as an integer or a digit string.
//!
//! decision: `event_id, action, score, rules, shadow_rules, models, epoch, shard,
//! server_ns`, with `models` an object `{ name: score }` (and `model_errors`, a list of the
//! models that failed for this event, only when non-empty).

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::schema::{ArchivedDecision, AttrValue, Attribute, Decision, Event, TopologyReply};

/// A JSON text that is not a valid event (or batch of events).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JsonError {
    message: String,
    /// Not JSON at all (or cut short), as opposed to JSON that is not a valid event.
    syntax: bool,
}

impl JsonError {
    fn data(message: String) -> JsonError {
        JsonError {
            message,
            syntax: false,
        }
    }

    fn parse(e: serde_json::Error) -> JsonError {
        use serde_json::error::Category;
        JsonError {
            message: e.to_string(),
            syntax: !matches!(e.classify(), Category::Data),
        }
    }

    fn within(self, what: std::fmt::Arguments<'_>) -> JsonError {
        JsonError {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }

    /// Whether the text is not JSON (or is cut short); otherwise it is JSON whose fields are
    /// missing, unknown, of the wrong type or out of range.
    pub fn is_syntax(&self) -> bool {
        self.syntax
    }
}

/// An id written as a string or an integer. (Not `#[serde(untagged)]`: that buffers the
/// value and, for an integer, builds and drops an error from trying a string first, a
/// measurable share of the HTTP port's time.)
struct IdJson(String);

impl<'de> Deserialize<'de> for IdJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IdJson, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IdJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an integer (i64)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdJson, E> {
                Ok(IdJson(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<IdJson, E> {
                Ok(IdJson(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdJson, E> {
                Ok(IdJson(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IdJson, E> {
                // Integer ids are i64, as the OpenAPI document says.
                match i64::try_from(v) {
                    Ok(v) => Ok(IdJson(v.to_string())),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl IdJson {
    fn into_string(self) -> String {
        self.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    event_id: IdJson,
    timestamp_ms: u64,
    account_id: IdJson,
    merchant_id: IdJson,
    amount_minor: i64,
    currency: String,
    country: String,
    channel: String,
    device_id: IdJson,
    /// Required, but may be `null` (without `deserialize_with`, serde would let an `Option`
    /// field be left out).
    #[serde(deserialize_with = "Option::deserialize")]
    ip: Option<String>,
    mcc: IdJson,
    #[serde(default)]
    features: Vec<f64>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

/// Parses one JSON event.
pub fn event_from_json(text: &str) -> Result<Event, JsonError> {
    if text.trim_start().starts_with('[') {
        // serde's derive would read a struct from an array of its fields in order.
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(JsonError::parse)?;
        return Err(JsonError::data(
            "an event is a JSON object, not an array".into(),
        ));
    }
    let raw: EventJson = serde_json::from_str(text).map_err(JsonError::parse)?;
    let ip = match raw.ip.as_deref() {
        None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(text) => text
            .parse()
            .map_err(|_| JsonError::data(format!("field `ip`: {text:?} is not an IP address")))?,
    };
    let mcc_text = raw.mcc.into_string();
    let digits = !mcc_text.is_empty() && mcc_text.bytes().all(|b| b.is_ascii_digit());
    let mcc: u16 = mcc_text.parse().ok().filter(|_| digits).ok_or_else(|| {
        JsonError::data(format!(
            "field `mcc`: {mcc_text:?} is not a number 0..=9999"
        ))
    })?;
    let mut attributes = Vec::with_capacity(raw.attributes.len());
    for (name, value) in raw.attributes {
        let value = match value {
            Value::String(s) => AttrValue::Str(s),
            Value::Bool(b) => AttrValue::Bool(b),
            Value::Number(n) => AttrValue::Num(n.as_f64().unwrap_or(f64::NAN)),
            other => {
                return Err(JsonError::data(format!(
                    "attribute `{name}`: {other} is not a string, number or boolean"
                )));
            }
        };
        attributes.push(Attribute { name, value });
    }
    Ok(Event {
        event_id: raw.event_id.into_string(),
        timestamp_ms: raw.timestamp_ms,
        account_id: raw.account_id.into_string(),
        merchant_id: raw.merchant_id.into_string(),
        amount_minor: raw.amount_minor,
        currency: raw.currency,
        country: raw.country,
        channel: raw.channel,
        device_id: raw.device_id.into_string(),
        ip,
        mcc,
        features: raw.features,
        attributes,
    })
}

/// How a batch of events was written; its decisions are written the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchForm {
    /// One JSON array of events.
    Array,
    /// NDJSON: one event per line (blank lines skipped).
    Lines,
}

/// Parses a batch of events: a JSON array of events, or NDJSON (one event per line). The
/// form is read from the text itself: an array starts with `[`. Errors name the event
/// (`event 3: ...`, counting from 0) or the line (`line 4: ...`, counting from 1).
pub fn events_from_json_batch(text: &str) -> Result<(Vec<Event>, BatchForm), JsonError> {
    if text.trim_start().starts_with('[') {
        let raw: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(text).map_err(JsonError::parse)?;
        let mut events = Vec::with_capacity(raw.len());
        for (i, one) in raw.iter().enumerate() {
            events
                .push(event_from_json(one.get()).map_err(|e| e.within(format_args!("event {i}")))?);
        }
        return Ok((events, BatchForm::Array));
    }
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        events.push(event_from_json(line).map_err(|e| e.within(format_args!("line {line_no}")))?);
    }
    Ok((events, BatchForm::Lines))
}

/// The JSON form of a topology reply (the field names of [`TopologyReply`]).
pub fn topology_to_json(t: &TopologyReply) -> Value {
    json!({
        "shard_count": t.shard_count,
        "shard": t.shard,
        "routing": t.routing,
        "address": t.address,
        "port": t.port,
        "shard_ports": t.shard_ports,
        "cpus": t.cpus,
        "partitions": t.partitions,
        "partition_shards": t.partition_shards,
    })
}

/// The JSON form of an error reply: `{"code": 6, "name": "bad_field", "message": "..."}`
/// (`name` is `"unknown"` for a code this build does not know).
pub fn error_to_json(code: u16, message: &str) -> Value {
    let name = crate::ErrorCode::from_u16(code).map_or("unknown", |c| c.name());
    json!({ "code": code, "name": name, "message": message })
}

/// The JSON form of an event (inverse of [`event_from_json`]).
pub fn event_to_json(event: &Event) -> Value {
    let attributes: Map<String, Value> = event
        .attributes
        .iter()
        .map(|a| {
            let v = match &a.value {
                AttrValue::Str(s) => json!(s),
                AttrValue::Num(n) => json!(n),
                AttrValue::Bool(b) => json!(b),
            };
            (a.name.clone(), v)
        })
        .collect();
    json!({
        "event_id": event.event_id,
        "timestamp_ms": event.timestamp_ms,
        "account_id": event.account_id,
        "merchant_id": event.merchant_id,
        "amount_minor": event.amount_minor,
        "currency": event.currency,
        "country": event.country,
        "channel": event.channel,
        "device_id": event.device_id,
        "ip": event.ip.to_string(),
        "mcc": event.mcc,
        "features": event.features,
        "attributes": attributes,
    })
}

/// The fixed names of a decision's JSON form, always present.
pub const DECISION_FIELDS: [&str; 9] = [
    "event_id",
    "action",
    "score",
    "rules",
    "shadow_rules",
    "models",
    "epoch",
    "shard",
    "server_ns",
];

/// The JSON form of a decision.
pub fn decision_to_json(decision: &Decision) -> Value {
    let models: Map<String, Value> = decision
        .models
        .iter()
        .map(|m| (m.name.clone(), json!(m.score)))
        .collect();
    let mut out = json!({
        "event_id": decision.event_id,
        "action": decision.action.as_str(),
        "score": decision.score,
        "rules": decision.rules,
        "shadow_rules": decision.shadow_rules,
        "models": models,
        "epoch": decision.epoch,
        "shard": decision.shard,
        "server_ns": decision.server_ns,
    });
    let failed: Vec<&str> = decision
        .models
        .iter()
        .filter(|m| m.error)
        .map(|m| m.name.as_str())
        .collect();
    if !failed.is_empty() {
        out["model_errors"] = json!(failed);
    }
    out
}

/// Writes the JSON form of an archived decision, one line: the same bytes as
/// `serde_json::to_writer` over [`decision_to_json`] of the decision it archives (keys in
/// the same sorted order), without building the owned decision or the JSON value (the HTTP
/// port writes every answer this way).
pub fn write_decision_json(decision: &ArchivedDecision, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &DecisionJson(decision))
        .expect("a decision always serializes");
}

/// An archived decision as its JSON form.
struct DecisionJson<'a>(&'a ArchivedDecision);

/// An archived decision's models as the JSON object `{ name: score }`, keys sorted (as in a
/// `serde_json::Map`, where a repeated name keeps its last score).
struct ModelsJson<'a>(&'a ArchivedDecision);

/// The names of the models that failed for an event.
struct ModelErrorsJson<'a>(&'a ArchivedDecision);

impl serde::Serialize for DecisionJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let d = self.0;
        let failed = d.models.iter().any(|m| m.error);
        let mut map = s.serialize_map(Some(9 + usize::from(failed)))?;
        // Sorted, as serde_json's Map (a BTreeMap) orders them.
        map.serialize_entry("action", d.action.to_native().as_str())?;
        map.serialize_entry("epoch", &d.epoch.to_native())?;
        map.serialize_entry("event_id", d.event_id.as_str())?;
        if failed {
            map.serialize_entry("model_errors", &ModelErrorsJson(d))?;
        }
        map.serialize_entry("models", &ModelsJson(d))?;
        map.serialize_entry("rules", &StrsJson(&d.rules))?;
        map.serialize_entry("score", &d.score.to_native())?;
        map.serialize_entry("server_ns", &d.server_ns.to_native())?;
        map.serialize_entry("shadow_rules", &StrsJson(&d.shadow_rules))?;
        map.serialize_entry("shard", &d.shard.to_native())?;
        map.end()
    }
}

impl serde::Serialize for ModelsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let models = &self.0.models;
        let mut order: Vec<usize> = (0..models.len()).collect();
        order.sort_by(|&a, &b| {
            models[a]
                .name
                .as_str()
                .cmp(models[b].name.as_str())
                .then(b.cmp(&a))
        });
        order.dedup_by(|later, first| models[*later].name == models[*first].name);
        let mut map = s.serialize_map(Some(order.len()))?;
        for i in order {
            let m = &models[i];
            map.serialize_entry(m.name.as_str(), &m.score.to_native())?;
        }
        map.end()
    }
}

impl serde::Serialize for ModelErrorsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .models
                .iter()
                .filter(|m| m.error)
                .map(|m| m.name.as_str()),
        )
    }
}

/// An archived vector of strings as a JSON array.
struct StrsJson<'a>(&'a rkyv::vec::ArchivedVec<rkyv::string::ArchivedString>);

impl serde::Serialize for StrsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| r.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Action, ModelScore};

    const LINE: &str = r#"{"event_id":"e-1","timestamp_ms":1700000000000,"account_id":"acct-42",
        "merchant_id":"m-7","amount_minor":129900,"currency":"USD","country":"US","channel":"web",
        "device_id":"d-1","ip":"203.0.113.9","mcc":5411,"features":[0.5,1],
        "attributes":{"email_domain":"example.com","account_age_days":12,"first_purchase":true}}"#;

    #[test]
    fn parses_the_documented_form() {
        let e = event_from_json(LINE).unwrap();
        assert_eq!(e.event_id, "e-1");
        assert_eq!(e.amount_minor, 129900);
        assert_eq!(e.ip.to_string(), "203.0.113.9");
        assert_eq!(e.mcc, 5411);
        assert_eq!(e.features, vec![0.5, 1.0]);
        assert_eq!(e.attributes.len(), 3);
        let back = event_from_json(&event_to_json(&e).to_string()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn ids_may_be_integers_and_ip_may_be_null() {
        let line = LINE
            .replace(r#""e-1""#, "17")
            .replace(r#""203.0.113.9""#, "null")
            .replace("5411", r#""5411""#);
        let e = event_from_json(&line).unwrap();
        assert_eq!(e.event_id, "17");
        assert!(e.ip.is_unspecified());
        assert_eq!(e.mcc, 5411);
    }

    #[test]
    fn errors_name_the_problem() {
        let missing = event_from_json(&LINE.replace(r#""currency":"USD","#, "")).unwrap_err();
        assert!(missing.to_string().contains("currency"), "{missing}");
        let bad_ip = event_from_json(&LINE.replace("203.0.113.9", "not-an-ip")).unwrap_err();
        assert!(bad_ip.to_string().contains("`ip`"), "{bad_ip}");
        let unknown = event_from_json(&LINE.replace("\"mcc\"", "\"mcc_code\"")).unwrap_err();
        assert!(unknown.to_string().contains("mcc_code"), "{unknown}");
    }

    #[test]
    fn numbers_parse_to_the_nearest_f64_and_round_trip() {
        // serde_json's default float parser read this as 8.744325850953595e299, one ULP off
        // (found by the `payload` fuzz target: an event's JSON form parsed to another event).
        let text = "8.744325850953594e+299";
        let line = LINE.replace("[0.5,1]", &format!("[{text}]"));
        let e = event_from_json(&line).unwrap();
        assert_eq!(e.features, vec![text.parse::<f64>().unwrap()]);
        let back = event_from_json(&event_to_json(&e).to_string()).unwrap();
        assert_eq!(back.features[0].to_bits(), e.features[0].to_bits());
    }

    #[test]
    fn an_event_is_an_object_with_every_field() {
        let no_ip = LINE.replace(r#""ip":"203.0.113.9","#, "");
        assert!(
            event_from_json(&no_ip)
                .unwrap_err()
                .to_string()
                .contains("ip")
        );
        let null_ip = LINE.replace(r#""203.0.113.9""#, "null");
        assert!(event_from_json(&null_ip).unwrap().ip.is_unspecified());
        let positional = r#"["e",1,"a","m",1,"USD","US","web","d",null,5411,[],{}]"#;
        let e = event_from_json(positional).unwrap_err();
        assert!(!e.is_syntax() && e.to_string().contains("object"), "{e}");
        assert!(event_from_json("[1,").unwrap_err().is_syntax());
        for mcc in [r#""+5""#, r#""""#, r#"" 5""#, "-1"] {
            let line = LINE.replace("5411", mcc);
            assert!(event_from_json(&line).is_err(), "mcc {mcc} accepted");
        }
        assert_eq!(
            event_from_json(&LINE.replace("5411", r#""0042""#))
                .unwrap()
                .mcc,
            42
        );
    }

    #[test]
    fn integer_ids_are_i64() {
        let huge = LINE.replace(r#""d-1""#, "9223372036854775808");
        assert!(!event_from_json(&huge).unwrap_err().is_syntax());
        let max = LINE.replace(r#""d-1""#, "9223372036854775807");
        assert_eq!(
            event_from_json(&max).unwrap().device_id,
            "9223372036854775807"
        );
        let negative = LINE.replace(r#""d-1""#, "-3");
        assert_eq!(event_from_json(&negative).unwrap().device_id, "-3");
        assert!(event_from_json(&LINE.replace(r#""d-1""#, "1.5")).is_err());
    }

    #[test]
    fn syntax_errors_are_told_from_invalid_events() {
        assert!(event_from_json("{\"event_id\":").unwrap_err().is_syntax());
        assert!(event_from_json("not json").unwrap_err().is_syntax());
        assert!(!event_from_json("{}").unwrap_err().is_syntax());
        let bad_ip = event_from_json(&LINE.replace("203.0.113.9", "x")).unwrap_err();
        assert!(!bad_ip.is_syntax());
    }

    #[test]
    fn batches_are_arrays_or_lines_and_errors_name_the_event() {
        let one = LINE.replace('\n', " ");
        let (events, form) = events_from_json_batch(&format!(" [{one},{one}]")).unwrap();
        assert_eq!((events.len(), form), (2, BatchForm::Array));
        let (events, form) = events_from_json_batch(&format!("{one}\n\n{one}\n")).unwrap();
        assert_eq!((events.len(), form), (2, BatchForm::Lines));
        assert_eq!(events_from_json_batch("[]").unwrap().0.len(), 0);
        let bad = one.replace("\"USD\"", "7");
        let e = events_from_json_batch(&format!("[{one},{bad}]")).unwrap_err();
        assert!(e.to_string().starts_with("event 1: "), "{e}");
        assert!(!e.is_syntax());
        let e = events_from_json_batch(&format!("{one}\n\n{bad}")).unwrap_err();
        assert!(e.to_string().starts_with("line 3: "), "{e}");
        assert!(
            events_from_json_batch(&format!("[{one},"))
                .unwrap_err()
                .is_syntax()
        );
    }

    #[test]
    fn archived_decisions_write_the_bytes_of_their_json_value() {
        let mut rng = fastrand::Rng::with_seed(20);
        let text = |rng: &mut fastrand::Rng| -> String {
            let pool = ["a", "b", "z", "\"q\"", "é\n", "\u{1}", "m2", ""];
            (0..rng.usize(0..4))
                .map(|_| pool[rng.usize(..pool.len())])
                .collect()
        };
        for _ in 0..500 {
            let d = Decision {
                event_id: text(&mut rng),
                action: [Action::Allow, Action::Review, Action::Deny][rng.usize(..3)],
                score: rng.i32(..),
                rules: (0..rng.usize(0..3)).map(|_| text(&mut rng)).collect(),
                shadow_rules: (0..rng.usize(0..3)).map(|_| text(&mut rng)).collect(),
                models: (0..rng.usize(0..4))
                    .map(|_| ModelScore {
                        name: text(&mut rng),
                        score: [0.25, f64::NAN, -0.0, 1e300, rng.f64(), f64::INFINITY]
                            [rng.usize(..6)],
                        error: rng.bool(),
                    })
                    .collect(),
                epoch: rng.u64(..),
                shard: rng.u32(..),
                server_ns: rng.u64(..),
            };
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&d).unwrap();
            let archived = rkyv::access::<ArchivedDecision, rkyv::rancor::Error>(&bytes).unwrap();
            let mut direct = Vec::new();
            write_decision_json(archived, &mut direct);
            let via_value = serde_json::to_vec(&decision_to_json(&d)).unwrap();
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(via_value).unwrap(),
                "{d:?}"
            );
        }
    }

    #[test]
    fn decision_json_has_the_fixed_names() {
        let d = Decision {
            event_id: "e-1".into(),
            action: Action::Deny,
            score: 80,
            rules: vec!["burst".into()],
            shadow_rules: vec![],
            models: vec![ModelScore {
                name: "m".into(),
                score: 0.25,
                error: false,
            }],
            epoch: 2,
            shard: 1,
            server_ns: 900,
        };
        let v = decision_to_json(&d);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in DECISION_FIELDS {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(v["action"], "deny");
        assert_eq!(v["models"]["m"], 0.25);
    }
}
