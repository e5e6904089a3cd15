//! The one place a client's text frame becomes a [`ClientMessage`], with the refusal a
//! client can act on when it does not. The rules (PROTOCOL.md, "Errors"):
//!
//! - not JSON at all: `malformed_json`;
//! - a key twice in one object, at any depth: `bad_message`. serde_json keeps the last one,
//!   so `{"type":"ping","type":"end"}` would otherwise be an `end` that a filter reading the
//!   first key took for a ping;
//! - a `type` this server does not know: `unknown_type`;
//! - anything else that is not exactly a message of the protocol (a missing or unknown
//!   field, a wrong value): `bad_message`.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::ClientMessage;

/// Why a frame is not a message: the `error` code to answer with, and a text for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Parse a client's text frame.
pub fn parse_client(text: &str) -> Result<ClientMessage, Refusal> {
    let value = strict_json(text).map_err(|e| {
        if e.is_data() {
            Refusal::new("bad_message", "a key appears twice in one object")
        } else {
            Refusal::new("malformed_json", "the message is not JSON")
        }
    })?;
    match value.get("type") {
        Some(Value::String(t)) if !ClientMessage::TYPES.contains(&t.as_str()) => {
            return Err(Refusal::new(
                "unknown_type",
                "this message type is not part of the protocol",
            ));
        }
        Some(Value::String(_)) => {}
        _ => {
            return Err(Refusal::new(
                "bad_message",
                "a message is an object with a type",
            ));
        }
    }
    ClientMessage::deserialize(value).map_err(|e| Refusal::new("bad_message", e.to_string()))
}

/// The JSON document `text`, refusing duplicate keys (a data error; syntax errors stay
/// syntax errors, so the two can be told apart).
fn strict_json(text: &str) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue::deserialize(&mut de)?.0;
    de.end()?;
    Ok(value)
}

/// A [`Value`] whose objects had no key twice. serde_json's recursion limit still applies.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this always is a number.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            v.push(item);
        }
        Ok(Value::Array(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if m.contains_key(&key) {
                // Not the key itself: it is the client's bytes, and errors are logged.
                return Err(de::Error::custom("duplicate key"));
            }
            let StrictValue(value) = map.next_value()?;
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        match parse_client(text) {
            Ok(m) => panic!("{text} was accepted as {m:?}"),
            Err(r) => r.code,
        }
    }

    #[test]
    fn every_message_type_is_accepted_in_its_documented_form() {
        for text in [
            r#"{"type":"join","v":1,"appointment":"tele-1","token":"x.y.z"}"#,
            r#"{"type":"join","v":1,"appointment":"tele-1","token":"x.y.z","invite":"abc"}"#,
            r#"{"type":"sdp","description":{"type":"offer","sdp":"v=0"}}"#,
            r#"{"type":"ice","candidate":{"candidate":"","sdpMid":"0","sdpMLineIndex":0}}"#,
            r#"{"type":"video_preference","track":"t3","max_quality":"low","pinned":true}"#,
            r#"{"type":"video_preference","track":"t3"}"#,
            r#"{"type":"admit","participant":"Patient/p"}"#,
            r#"{"type":"deny","participant":"Patient/p"}"#,
            r#"{"type":"return_to_lobby","participant":"Patient/p"}"#,
            r#"{"type":"mute","participant":"Patient/p","kind":"audio","muted":true}"#,
            r#"{"type":"remove","participant":"Patient/p"}"#,
            r#"{"type":"end"}"#,
            r#"{"type":"extend","minutes":10}"#,
            r#"{"type":"invite_interpreter"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"ping"}"#,
            "  {\"type\" : \"ping\"}\n",
        ] {
            assert!(
                parse_client(text).is_ok(),
                "{text}: {:?}",
                parse_client(text)
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_on_every_message_type() {
        for t in ClientMessage::TYPES {
            // The smallest valid message of this type, plus one field it does not have.
            let mut m = serde_json::to_value(ClientMessage::sample(t)).unwrap();
            assert!(parse_client(&m.to_string()).is_ok(), "{m}");
            m["x"] = 1.into();
            assert_eq!(code(&m.to_string()), "bad_message", "{m}");
        }
        // Nested objects too: a description or a candidate with a field of its own.
        assert_eq!(
            code(r#"{"type":"sdp","description":{"type":"offer","sdp":"v=0","to":"Patient/x"}}"#),
            "bad_message"
        );
    }

    #[test]
    fn a_key_twice_is_refused_not_last_one_wins() {
        for text in [
            r#"{"type":"ping","type":"end"}"#,
            r#"{"type":"end","type":"end"}"#,
            r#"{"type":"extend","minutes":1,"minutes":30}"#,
            r#"{"type":"ice","candidate":{"candidate":"a","candidate":"b"}}"#,
            r#"{"type":"sdp","description":{"type":"answer","type":"offer","sdp":"v=0"}}"#,
        ] {
            assert_eq!(code(text), "bad_message", "{text}");
        }
    }

    #[test]
    fn each_kind_of_bad_frame_has_its_code() {
        for (text, expected) in [
            ("{not json", "malformed_json"),
            ("", "malformed_json"),
            (r#"{"type":"ping"} {"type":"ping"}"#, "malformed_json"),
            (r#"{"type":"make_me_host"}"#, "unknown_type"),
            (r#"{"type":"Ping"}"#, "unknown_type"),
            (r#"{"type":7}"#, "bad_message"),
            (r#"{"v":1}"#, "bad_message"),
            (r#"[{"type":"ping"}]"#, "bad_message"),
            (r#""ping""#, "bad_message"),
            (r#"{"type":"extend"}"#, "bad_message"),
            (r#"{"type":"extend","minutes":-5}"#, "bad_message"),
            // A known type with a bad nested value is not an unknown type.
            (
                r#"{"type":"sdp","description":{"type":"pranswer","sdp":"v=0"}}"#,
                "bad_message",
            ),
            (
                r#"{"type":"video_preference","track":"t1","max_quality":"ultra"}"#,
                "bad_message",
            ),
            (
                r#"{"type":"mute","participant":"Patient/p","kind":"screen","muted":true}"#,
                "bad_message",
            ),
        ] {
            assert_eq!(code(text), expected, "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"type":"ice","candidate":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(code(&deep), "malformed_json");
    }
}
