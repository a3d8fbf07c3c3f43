//! The event as the rules see it: the named fields of a validated, archived event, each with
//! its type, and the value types of the language.
//!
//! Reading a field is a field access on the archive (no copy, no lookup by name); `amount`
//! scales `amount_minor` by the currency's ISO 4217 exponent, `hour` is the UTC hour of
//! `timestamp_ms`, `ip` is canonical (an IPv4-mapped IPv6 address reads as the IPv4 one).

use std::net::IpAddr;

use verdict_net::{ArchivedAttrValue, ArchivedEvent};

/// The value types of the rule language. Numbers are `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ty {
    Num,
    Str,
    Bool,
    Ip,
}

impl Ty {
    /// How the type reads in an error message.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Num => "a number",
            Ty::Str => "a string",
            Ty::Bool => "true/false",
            Ty::Ip => "an IP address",
        }
    }

    /// The plural, for lists and sets.
    pub fn plural(self) -> &'static str {
        match self {
            Ty::Num => "numbers",
            Ty::Str => "strings",
            Ty::Bool => "booleans",
            Ty::Ip => "IP addresses and networks",
        }
    }
}

/// A named field of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    EventId,
    Account,
    Merchant,
    Device,
    Currency,
    Country,
    Channel,
    Amount,
    AmountMinor,
    Mcc,
    Hour,
    TimestampMs,
    Ip,
}

/// Every field by the name rules use for it.
pub const FIELDS: [(&str, Field); 13] = [
    ("event_id", Field::EventId),
    ("account", Field::Account),
    ("merchant", Field::Merchant),
    ("device", Field::Device),
    ("currency", Field::Currency),
    ("country", Field::Country),
    ("channel", Field::Channel),
    ("amount", Field::Amount),
    ("amount_minor", Field::AmountMinor),
    ("mcc", Field::Mcc),
    ("hour", Field::Hour),
    ("timestamp_ms", Field::TimestampMs),
    ("ip", Field::Ip),
];

impl Field {
    pub fn lookup(name: &str) -> Option<Field> {
        FIELDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("every field is in FIELDS")
    }

    pub fn ty(self) -> Ty {
        match self {
            Field::EventId
            | Field::Account
            | Field::Merchant
            | Field::Device
            | Field::Currency
            | Field::Country
            | Field::Channel => Ty::Str,
            Field::Amount | Field::AmountMinor | Field::Mcc | Field::Hour | Field::TimestampMs => {
                Ty::Num
            }
            Field::Ip => Ty::Ip,
        }
    }

    /// A string field's value; "" for a field of another type (the checker never asks).
    #[inline]
    pub fn str(self, e: &ArchivedEvent) -> &str {
        match self {
            Field::EventId => e.event_id.as_str(),
            Field::Account => e.account_id.as_str(),
            Field::Merchant => e.merchant_id.as_str(),
            Field::Device => e.device_id.as_str(),
            Field::Currency => e.currency.as_str(),
            Field::Country => e.country.as_str(),
            Field::Channel => e.channel.as_str(),
            _ => "",
        }
    }

    /// A number field's value; 0 for a field of another type (the checker never asks).
    #[inline]
    pub fn num(self, e: &ArchivedEvent) -> f64 {
        match self {
            Field::Amount => amount(e),
            Field::AmountMinor => e.amount_minor.to_native() as f64,
            Field::Mcc => f64::from(e.mcc.to_native()),
            Field::Hour => hour(e),
            Field::TimestampMs => e.timestamp_ms.to_native() as f64,
            _ => 0.0,
        }
    }
}

/// Currencies whose minor unit is not 2 decimal places (ISO 4217).
const EXPONENTS: [(&[u8; 3], i32); 26] = [
    (b"BIF", 0),
    (b"CLP", 0),
    (b"DJF", 0),
    (b"GNF", 0),
    (b"ISK", 0),
    (b"JPY", 0),
    (b"KMF", 0),
    (b"KRW", 0),
    (b"PYG", 0),
    (b"RWF", 0),
    (b"UGX", 0),
    (b"UYI", 0),
    (b"VND", 0),
    (b"VUV", 0),
    (b"XAF", 0),
    (b"XOF", 0),
    (b"XPF", 0),
    (b"BHD", 3),
    (b"IQD", 3),
    (b"JOD", 3),
    (b"KWD", 3),
    (b"LYD", 3),
    (b"OMR", 3),
    (b"TND", 3),
    (b"CLF", 4),
    (b"UYW", 4),
];

/// Decimal places of an ISO 4217 currency's minor unit (2 for codes not listed here).
#[inline]
pub fn currency_exponent(code: &str) -> i32 {
    let &[a, b, c] = code.as_bytes() else {
        return 2;
    };
    let key = u32::from_le_bytes([a, b, c, 0]);
    EXPONENTS
        .iter()
        .find(|(code, _)| u32::from_le_bytes([code[0], code[1], code[2], 0]) == key)
        .map_or(2, |(_, e)| *e)
}

/// `amount_minor` in major units. IEEE division is correctly rounded, so the result is the
/// double nearest the exact decimal: `amount > 5000.01` compares exactly as written.
#[inline]
pub fn amount(e: &ArchivedEvent) -> f64 {
    const SCALE: [f64; 5] = [1.0, 10.0, 100.0, 1000.0, 10000.0];
    e.amount_minor.to_native() as f64 / SCALE[currency_exponent(e.currency.as_str()) as usize]
}

/// The UTC hour (0..=23) of `timestamp_ms`.
#[inline]
pub fn hour(e: &ArchivedEvent) -> f64 {
    ((e.timestamp_ms.to_native() / 3_600_000) % 24) as f64
}

/// The event's IP, canonical: `::ffff:10.1.2.3` reads as `10.1.2.3`.
#[inline]
pub fn ip(e: &ArchivedEvent) -> IpAddr {
    e.ip.as_ipaddr().to_canonical()
}

/// An attribute's value by name, if the event carries it.
#[inline]
pub fn attribute<'a>(e: &'a ArchivedEvent, name: &str) -> Option<&'a ArchivedAttrValue> {
    e.attributes
        .iter()
        .find(|a| a.name.as_str() == name)
        .map(|a| &a.value)
}

/// An IP network (`10.0.0.0/8`; a plain address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `v6/n`. Host bits must be zero.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or network"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0..={max}")),
            },
        };
        let net = IpNet { addr, prefix };
        if net.masked() != addr_bits(addr) {
            return Err(format!(
                "`{text}` has host bits set past /{prefix}; write the network address"
            ));
        }
        Ok(net)
    }

    fn masked(&self) -> u128 {
        mask(addr_bits(self.addr), self.addr.is_ipv4(), self.prefix)
    }

    /// Whether `ip` (canonical) is in this network.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && mask(addr_bits(ip), ip.is_ipv4(), self.prefix) == self.masked()
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The address as a number: IPv4 in the low 32 bits.
#[inline]
pub fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `bits` with everything past the first `prefix` bits cleared.
#[inline]
pub fn mask(bits: u128, v4: bool, prefix: u8) -> u128 {
    let width = if v4 { 32 } else { 128 };
    let host = u32::from(width - prefix);
    if host >= 128 {
        0
    } else {
        bits & !((1u128 << host) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let everything = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(everything.contains("8.8.8.8".parse().unwrap()));
        let host = IpNet::parse("192.168.1.7").unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains("192.168.1.7".parse().unwrap()));
        assert!(!host.contains("192.168.1.8".parse().unwrap()));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(
            IpNet::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(IpNet::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(IpNet::parse("nope").is_err());
    }

    #[test]
    fn currency_exponents_follow_iso_4217() {
        assert_eq!(currency_exponent("USD"), 2);
        assert_eq!(currency_exponent("JPY"), 0);
        assert_eq!(currency_exponent("KWD"), 3);
    }
}
