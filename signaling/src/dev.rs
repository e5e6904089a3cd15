//! Development mode: a token issuer for demo identities (ES256, its JWKS served by this
//! service), and demo appointments scheduled around "now". Never enabled in production:
//! anyone can mint any identity here.

use std::path::Path;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::rand_core::OsRng;
use p256::pkcs8::EncodePrivateKey;
use serde::Serialize;

pub const DEV_KEY_ID: &str = "metaclinic-dev-1";
pub const DEV_AUDIENCE: &str = "metaclinic";

/// A demo person: their FHIR reference and what they are in the demo appointments.
#[derive(Debug, Clone, Serialize)]
pub struct DemoIdentity {
    pub fhir_user: &'static str,
    pub label: &'static str,
}

pub const DEMO_IDENTITIES: [DemoIdentity; 5] = [
    DemoIdentity {
        fhir_user: "Practitioner/dr-demo",
        label: "Doctor (host)",
    },
    DemoIdentity {
        fhir_user: "Patient/pat-demo",
        label: "Patient",
    },
    DemoIdentity {
        fhir_user: "Practitioner/interp-demo",
        label: "Interpreter",
    },
    DemoIdentity {
        fhir_user: "RelatedPerson/family-demo",
        label: "Family member",
    },
    DemoIdentity {
        fhir_user: "Practitioner/interp-oncall",
        label: "On-call interpreter (joins by invite)",
    },
];

pub struct DevIssuer {
    key: EncodingKey,
    jwk: serde_json::Value,
    pub issuer: String,
    pub fhir_base: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    #[serde(rename = "fhirUser")]
    fhir_user: String,
}

impl DevIssuer {
    /// A fresh key; `issuer` is this service's public URL.
    pub fn new(issuer: &str) -> anyhow::Result<DevIssuer> {
        let signing = SigningKey::random(&mut OsRng);
        let pem = signing.to_pkcs8_pem(Default::default())?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let public = p256::PublicKey::from(signing.verifying_key());
        let mut jwk: serde_json::Value = serde_json::from_str(&public.to_jwk_string())?;
        jwk["kid"] = DEV_KEY_ID.into();
        jwk["alg"] = "ES256".into();
        jwk["use"] = "sig".into();
        let issuer = issuer.trim_end_matches('/').to_owned();
        Ok(DevIssuer {
            key,
            jwk,
            fhir_base: format!("{issuer}/fhir"),
            issuer,
        })
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    /// A token for `fhir_user` (a relative reference), valid for `minutes`.
    pub fn token(
        &self,
        fhir_user: &str,
        now: DateTime<Utc>,
        minutes: i64,
    ) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(DEV_KEY_ID.into());
        let claims = Claims {
            iss: &self.issuer,
            aud: DEV_AUDIENCE,
            sub: fhir_user,
            iat: now.timestamp(),
            nbf: now.timestamp() - 5,
            exp: now.timestamp() + minutes * 60,
            jti: uuid::Uuid::new_v4().to_string(),
            fhir_user: format!("{}/{fhir_user}", self.fhir_base),
        };
        // p256 does not normalize its signatures; the verifier takes only low-s ones.
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok(crate::identity::with_low_s(&token))
    }
}

/// Write the demo appointments into `dir`, scheduled from a little before `now`:
/// `demo-consult` (doctor, patient, interpreter, family member), `demo-interpreter-invite`
/// (an interpreter slot nobody holds yet: the doctor invites one) and `demo-group` (the
/// demo identities in a shared room).
pub fn write_demo_appointments(dir: &Path, now: DateTime<Utc>) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let start =
        (now - chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end =
        (now + chrono::Duration::minutes(55)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let translator = serde_json::json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/participant-type", "code": "translator" }] }]);
    let attending = serde_json::json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND" }] }]);
    let consult = serde_json::json!({
        "resourceType": "Appointment",
        "id": "demo-consult",
        "status": "booked",
        "description": "Demo video consultation with an interpreter",
        "start": start,
        "end": end,
        "participant": [
            { "actor": { "reference": "Patient/pat-demo" }, "required": "required", "status": "accepted" },
            { "type": attending, "actor": { "reference": "Practitioner/dr-demo" }, "required": "required", "status": "accepted" },
            { "type": translator, "actor": { "reference": "Practitioner/interp-demo" }, "required": "required", "status": "accepted" },
            { "actor": { "reference": "RelatedPerson/family-demo" }, "required": "optional", "status": "accepted" }
        ]
    });
    let invite = serde_json::json!({
        "resourceType": "Appointment",
        "id": "demo-interpreter-invite",
        "status": "booked",
        "description": "Demo: the interpreter is not assigned yet; the doctor invites one",
        "start": start,
        "end": end,
        "participant": [
            { "actor": { "reference": "Patient/pat-demo" }, "required": "required", "status": "accepted" },
            { "type": attending, "actor": { "reference": "Practitioner/dr-demo" }, "required": "required", "status": "accepted" },
            { "type": translator, "required": "required", "status": "needs-action" }
        ]
    });
    // A group session in a shared room: everyone's voice comes from where their avatar
    // stands. The code is rooms.shared_codes' default.
    let group = serde_json::json!({
        "resourceType": "Appointment",
        "id": "demo-group",
        "status": "booked",
        "description": "Demo group session in a shared room (spatial audio, avatars on a map)",
        "serviceType": [{ "coding": [{ "system": crate::config::ROOM_KIND_SYSTEM, "code": "shared" }] }],
        "start": start,
        "end": end,
        "participant": [
            { "type": attending, "actor": { "reference": "Practitioner/dr-demo" }, "required": "required", "status": "accepted" },
            { "actor": { "reference": "Patient/pat-demo" }, "required": "required", "status": "accepted" },
            { "actor": { "reference": "RelatedPerson/family-demo" }, "required": "optional", "status": "accepted" },
            { "type": translator, "actor": { "reference": "Practitioner/interp-demo" }, "required": "optional", "status": "accepted" }
        ]
    });
    let mut ids = Vec::new();
    for a in [consult, invite, group] {
        let id = a["id"].as_str().unwrap_or_default().to_owned();
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_vec_pretty(&a)?,
        )?;
        ids.push(id);
    }
    Ok(ids)
}
