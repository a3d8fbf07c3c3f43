//! Field checks on an archived event, run by the server after bytecheck validation and
//! before anything decides on it. A failure names the field and never allocates.

use crate::schema::{ArchivedAttrValue, ArchivedEvent};

/// Longest `event_id` / `account_id` / `merchant_id` / `device_id`, in bytes.
pub const ID_LEN_MAX_BYTES: usize = 128;
/// Longest `channel`, in bytes.
pub const CHANNEL_LEN_MAX_BYTES: usize = 32;
/// Most precomputed features per event.
pub const FEATURES_MAX: usize = 1024;
/// Most attributes per event.
pub const ATTRIBUTES_MAX: usize = 64;
/// Longest attribute name, in bytes.
pub const ATTRIBUTE_NAME_LEN_MAX_BYTES: usize = 64;
/// Longest string attribute value, in bytes.
pub const ATTRIBUTE_VALUE_LEN_MAX_BYTES: usize = 256;
/// Largest merchant category code.
pub const MCC_MAX: u16 = 9999;

/// A field whose value is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: &'static str,
}

fn bad(field: &'static str, problem: &'static str) -> Result<(), FieldError> {
    Err(FieldError { field, problem })
}

fn check_id(field: &'static str, value: &str, required: bool) -> Result<(), FieldError> {
    if required && value.is_empty() {
        return bad(field, "must not be empty");
    }
    if value.len() > ID_LEN_MAX_BYTES {
        return bad(field, "is longer than 128 bytes");
    }
    Ok(())
}

fn is_upper_code(value: &str, len: usize) -> bool {
    value.len() == len && value.bytes().all(|b| b.is_ascii_uppercase())
}

/// Checks every field of an archived event against the documented ranges.
pub fn validate_event(event: &ArchivedEvent) -> Result<(), FieldError> {
    check_id("event_id", &event.event_id, true)?;
    check_id("account_id", &event.account_id, true)?;
    check_id("merchant_id", &event.merchant_id, false)?;
    check_id("device_id", &event.device_id, false)?;
    if event.amount_minor.to_native() < 0 {
        return bad("amount_minor", "must not be negative");
    }
    if !is_upper_code(&event.currency, 3) {
        return bad(
            "currency",
            "must be a three-letter ISO 4217 code in capitals",
        );
    }
    if !is_upper_code(&event.country, 2) {
        return bad("country", "must be a two-letter ISO 3166 code in capitals");
    }
    if event.channel.len() > CHANNEL_LEN_MAX_BYTES {
        return bad("channel", "is longer than 32 bytes");
    }
    if event.mcc.to_native() > MCC_MAX {
        return bad("mcc", "must be at most 9999");
    }
    if event.features.len() > FEATURES_MAX {
        return bad("features", "has more than 1024 values");
    }
    if event.features.iter().any(|f| !f.to_native().is_finite()) {
        return bad("features", "must all be finite numbers");
    }
    if event.attributes.len() > ATTRIBUTES_MAX {
        return bad("attributes", "has more than 64 entries");
    }
    for (i, attr) in event.attributes.iter().enumerate() {
        if attr.name.is_empty() || attr.name.len() > ATTRIBUTE_NAME_LEN_MAX_BYTES {
            return bad(
                "attributes",
                "has a name that is empty or longer than 64 bytes",
            );
        }
        if event.attributes[..i].iter().any(|a| a.name == attr.name) {
            return bad("attributes", "has a duplicate name");
        }
        match &attr.value {
            ArchivedAttrValue::Str(s) if s.len() > ATTRIBUTE_VALUE_LEN_MAX_BYTES => {
                return bad("attributes", "has a string value longer than 256 bytes");
            }
            ArchivedAttrValue::Num(n) if !n.to_native().is_finite() => {
                return bad("attributes", "has a number that is not finite");
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{AttrValue, Attribute, Event};
    use crate::test_event;

    fn check(event: &Event) -> Result<(), FieldError> {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        validate_event(archived)
    }

    #[test]
    fn a_plain_event_passes() {
        assert_eq!(check(&test_event("e1", "acct-1", 1000)), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut Event)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("event_id", Box::new(|e| e.event_id.clear())),
            ("account_id", Box::new(|e| e.account_id = "x".repeat(129))),
            ("amount_minor", Box::new(|e| e.amount_minor = -1)),
            ("currency", Box::new(|e| e.currency = "usd".into())),
            ("currency", Box::new(|e| e.currency = "USDX".into())),
            ("country", Box::new(|e| e.country = "USA".into())),
            ("channel", Box::new(|e| e.channel = "c".repeat(33))),
            ("mcc", Box::new(|e| e.mcc = 10_000)),
            ("features", Box::new(|e| e.features = vec![1.0, f64::NAN])),
            ("features", Box::new(|e| e.features = vec![0.0; 1025])),
            (
                "attributes",
                Box::new(|e| {
                    let a = Attribute {
                        name: "k".into(),
                        value: AttrValue::Bool(true),
                    };
                    e.attributes = vec![a.clone(), a];
                }),
            ),
            (
                "attributes",
                Box::new(|e| {
                    e.attributes = vec![Attribute {
                        name: "n".into(),
                        value: AttrValue::Num(f64::INFINITY),
                    }]
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut event = test_event("e1", "acct-1", 1000);
            mutate(&mut event);
            assert_eq!(check(&event).map_err(|e| e.field), Err(field));
        }
    }
}
