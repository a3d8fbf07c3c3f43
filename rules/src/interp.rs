//! The reference interpreter: walks the checked tree for every event, with dynamic values,
//! no constant folding and sets scanned member by member. It is the language's semantics
//! written as plainly as possible: property tests hold the compiled rule set to it (velocity
//! included: [`record_velocity`] records each function on its own), and the benches measure
//! the compiler against it. Never used to serve.

use std::net::IpAddr;

use verdict_net::{Action, ArchivedAttrValue, ArchivedEvent};

use crate::compile::stronger;
use crate::event::{self, Field};
use crate::ir::*;
use crate::velocity::{Sample, VelocityState};

#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Num(f64),
    Str(&'a str),
    Bool(bool),
    Ip(IpAddr),
}

/// What the interpreter decided for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub action: Action,
    pub score: i32,
    pub rules: Vec<String>,
    pub shadow_rules: Vec<String>,
}

/// Decides `event` under `program`. `velocity` holds each velocity function's value for the
/// event (the interpreter keeps no state), `models` each model's score.
pub fn decide(
    program: &Program,
    default_action: Action,
    event: &ArchivedEvent,
    velocity: &[f64],
    models: &[f64],
) -> Decided {
    let env = Env {
        program,
        event,
        velocity,
        models,
        score: 0.0,
    };
    let mut score = 0i64;
    let mut action: Option<Action> = None;
    let mut rules = Vec::new();
    let mut shadow_rules = Vec::new();
    for rule in &program.rules {
        if env.eval(&rule.when) != Value::Bool(true) {
            continue;
        }
        if rule.shadow {
            shadow_rules.push(rule.name.clone());
            continue;
        }
        rules.push(rule.name.clone());
        score += rule.score;
        if let Some(a) = rule.action {
            action = Some(action.map_or(a, |b| stronger(a, b)));
        }
    }
    let score = score.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    let env = Env {
        score: f64::from(score),
        ..env
    };
    let action = match &program.policy {
        None => action.unwrap_or(default_action),
        Some(policy) => {
            let mut by_policy = policy.otherwise.unwrap_or(default_action);
            for (a, when) in &policy.arms {
                if env.eval(when) == Value::Bool(true) {
                    by_policy = *a;
                    break;
                }
            }
            action.map_or(by_policy, |a| stronger(a, by_policy))
        }
    };
    Decided {
        action,
        score,
        rules,
        shadow_rules,
    }
}

/// Records `event` in every velocity function of `program` the plain way, each function
/// hashing its own key, and returns each function's value (what [`decide`] takes). `state`
/// must be prepared for `program.velocity` and used for nothing else.
pub fn record_velocity(
    program: &Program,
    event: &ArchivedEvent,
    state: &mut VelocityState,
) -> Vec<f64> {
    use std::hash::BuildHasher;
    let env = Env {
        program,
        event,
        velocity: &[],
        models: &[],
        score: 0.0,
    };
    let ts = event.timestamp_ms.to_native();
    let mut values = Vec::new();
    for (i, spec) in program.velocity.iter().enumerate() {
        let key: Vec<u8> = match spec.key {
            VelocityKey::Account => event.account_id.as_bytes().to_vec(),
            VelocityKey::Device => event.device_id.as_bytes().to_vec(),
            VelocityKey::Merchant => event.merchant_id.as_bytes().to_vec(),
            VelocityKey::Ip => match event::ip(event) {
                ip if ip.is_unspecified() => Vec::new(),
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            },
        };
        let hasher = state.value_hasher();
        let sample = match (spec.agg, &spec.field) {
            (Agg::Count, _) => Sample::Count,
            (Agg::Sum, Some(f)) => Sample::Sum(env.number(f)),
            (Agg::Distinct, Some(f)) => Sample::Distinct(match env.eval(f) {
                Value::Str(s) => hasher.hash_one(s),
                // -0.0 and 0.0 are one value.
                Value::Num(x) => hasher.hash_one(if x == 0.0 { 0 } else { x.to_bits() }),
                Value::Ip(ip) => hasher.hash_one(ip),
                Value::Bool(_) => unreachable!("checked: no booleans in velocity"),
            }),
            _ => unreachable!("checked: sum and distinct have a value"),
        };
        values.push(state.record(i, &key, ts, sample));
    }
    values
}

struct Env<'a> {
    program: &'a Program,
    event: &'a ArchivedEvent,
    velocity: &'a [f64],
    models: &'a [f64],
    score: f64,
}

impl<'a> Env<'a> {
    fn eval(&self, n: &'a Node) -> Value<'a> {
        match &n.kind {
            NodeKind::Num(x) => Value::Num(*x),
            NodeKind::Str(s) => Value::Str(s),
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Ip(ip) => Value::Ip(*ip),
            NodeKind::Field(f) => self.field(*f),
            NodeKind::Attr(i) => self.attribute(&self.program.attributes[*i as usize]),
            NodeKind::Feature(i) => Value::Num(
                self.event
                    .features
                    .get(*i as usize)
                    .map_or(0.0, |x| x.to_native()),
            ),
            NodeKind::Velocity(i) => Value::Num(self.velocity[*i as usize]),
            // A score the caller did not pass reads 0, as in the compiled rule set.
            NodeKind::Model(i) => Value::Num(self.models.get(*i as usize).copied().unwrap_or(0.0)),
            NodeKind::Score => Value::Num(self.score),
            NodeKind::Not(x) => Value::Bool(!self.truth(x)),
            NodeKind::Neg(x) => Value::Num(-self.number(x)),
            NodeKind::And(l, r) => Value::Bool(self.truth(l) && self.truth(r)),
            NodeKind::Or(l, r) => Value::Bool(self.truth(l) || self.truth(r)),
            NodeKind::Cmp { op, lhs, rhs } => Value::Bool(match (self.eval(lhs), self.eval(rhs)) {
                (Value::Num(a), Value::Num(b)) => op.num(a, b),
                (a, b) => op.same(&a, &b),
            }),
            NodeKind::Arith { op, lhs, rhs } => {
                Value::Num(op.apply(self.number(lhs), self.number(rhs)))
            }
            NodeKind::StrOp { op, lhs, rhs } => match (self.eval(lhs), self.eval(rhs)) {
                (Value::Str(a), Value::Str(b)) => Value::Bool(op.apply(a, b)),
                _ => unreachable!("checked: strings"),
            },
            NodeKind::In { expr, set, negated } => {
                let values = match set {
                    SetRef::List(i) => &self.program.lists[*i as usize].values,
                    SetRef::Literal(v) => v,
                };
                let member = match self.eval(expr) {
                    Value::Str(s) => values.contains_str(s),
                    Value::Num(x) => values.contains_num(x),
                    Value::Ip(ip) => values.contains_ip(ip),
                    Value::Bool(_) => unreachable!("checked: no booleans in sets"),
                };
                Value::Bool(member != *negated)
            }
        }
    }

    fn truth(&self, n: &'a Node) -> bool {
        self.eval(n) == Value::Bool(true)
    }

    fn number(&self, n: &'a Node) -> f64 {
        match self.eval(n) {
            Value::Num(x) => x,
            _ => unreachable!("checked: a number"),
        }
    }

    fn field(&self, f: Field) -> Value<'a> {
        let e = self.event;
        match f {
            Field::EventId => Value::Str(e.event_id.as_str()),
            Field::Account => Value::Str(e.account_id.as_str()),
            Field::Merchant => Value::Str(e.merchant_id.as_str()),
            Field::Device => Value::Str(e.device_id.as_str()),
            Field::Currency => Value::Str(e.currency.as_str()),
            Field::Country => Value::Str(e.country.as_str()),
            Field::Channel => Value::Str(e.channel.as_str()),
            Field::Amount => {
                let exponent = event::currency_exponent(e.currency.as_str());
                Value::Num(e.amount_minor.to_native() as f64 / 10f64.powi(exponent))
            }
            Field::AmountMinor => Value::Num(e.amount_minor.to_native() as f64),
            Field::Mcc => Value::Num(f64::from(e.mcc.to_native())),
            Field::Hour => Value::Num(((e.timestamp_ms.to_native() / 3_600_000) % 24) as f64),
            Field::TimestampMs => Value::Num(e.timestamp_ms.to_native() as f64),
            Field::Ip => Value::Ip(e.ip.as_ipaddr().to_canonical()),
        }
    }

    fn attribute(&self, attr: &'a Attribute) -> Value<'a> {
        let found = self
            .event
            .attributes
            .iter()
            .find(|a| a.name.as_str() == attr.name)
            .map(|a| &a.value);
        match (found, &attr.default) {
            (Some(ArchivedAttrValue::Str(s)), AttrDefault::Str(_)) => Value::Str(s.as_str()),
            (Some(ArchivedAttrValue::Num(x)), AttrDefault::Num(_)) => Value::Num(x.to_native()),
            (Some(ArchivedAttrValue::Bool(b)), AttrDefault::Bool(_)) => Value::Bool(*b),
            (_, AttrDefault::Str(s)) => Value::Str(s),
            (_, AttrDefault::Num(x)) => Value::Num(*x),
            (_, AttrDefault::Bool(b)) => Value::Bool(*b),
        }
    }
}
