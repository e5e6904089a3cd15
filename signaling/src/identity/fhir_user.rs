//! The `fhirUser` claim (SMART App Launch): a reference to the FHIR resource of the person who
//! logged in, either relative ("Practitioner/prac-77") or absolute under the hospital's FHIR
//! server. Everything downstream (booking lookups, the audit log) compares references as
//! strings, so there is exactly one accepted spelling: the relative one.
//!
//! The parsing is deliberately manual and strict rather than done with a URL library: URL
//! normalisation (dot segments, percent-decoding) would let two different claims name the same
//! resource, and we would rather refuse an odd claim than guess what it means.

/// The resource types that can be a logged-in user in SMART on FHIR.
const USER_TYPES: [&str; 5] = [
    "Practitioner",
    "Patient",
    "RelatedPerson",
    "PractitionerRole",
    "Person",
];

/// Maximum length of a FHIR logical id (FHIR R4 `id` datatype).
const MAX_ID_LEN: usize = 64;

/// Normalize a `fhirUser` claim to a relative reference "Type/id".
///
/// Accepted: a relative "Type/id", or an absolute URL under `fhir_base` (trailing slashes, and the
/// case of scheme and host, are tolerated). Anything else yields `None`: another base, another
/// resource type, an empty id, extra path segments, a query or fragment, or characters outside
/// the FHIR id alphabet `[A-Za-z0-9\-\.]{1,64}`.
pub fn normalize_fhir_user(claim: &str, fhir_base: &str) -> Option<String> {
    let claim = claim.trim_end_matches('/');
    let relative = if has_http_scheme(claim) {
        let (scheme, authority, path) = split_url(claim)?;
        let (base_scheme, base_authority, base_path) = split_url(fhir_base.trim_end_matches('/'))?;
        if !scheme.eq_ignore_ascii_case(base_scheme)
            || !authority.eq_ignore_ascii_case(base_authority)
        {
            return None;
        }
        // The base path is compared exactly: paths are case-sensitive.
        path.strip_prefix(base_path)?.strip_prefix('/')?
    } else {
        claim
    };
    let (resource_type, id) = relative.split_once('/')?;
    if !USER_TYPES.contains(&resource_type) || !is_fhir_id(id) {
        return None;
    }
    Some(format!("{resource_type}/{id}"))
}

fn has_http_scheme(s: &str) -> bool {
    let lower = |n: usize| s.get(..n).map(str::to_ascii_lowercase);
    lower(7).as_deref() == Some("http://") || lower(8).as_deref() == Some("https://")
}

/// Split "scheme://authority/path" into its three parts; the path is "" or starts with '/'.
/// Queries, fragments and userinfo are not split off: they then fail the comparisons.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.is_empty() {
        return None;
    }
    Some((scheme, authority, path))
}

fn is_fhir_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        // The FHIR alphabet allows "..", which would climb out of the type when the reference is
        // later appended to a URL.
        && !id.bytes().all(|b| b == b'.')
}

#[cfg(test)]
mod tests {
    use super::normalize_fhir_user;

    const BASE: &str = "https://fhir.hospital.example/R4";

    fn norm(claim: &str) -> Option<String> {
        normalize_fhir_user(claim, BASE)
    }

    #[test]
    fn relative_references_of_user_types_are_kept() {
        assert_eq!(
            norm("Practitioner/prac-77").as_deref(),
            Some("Practitioner/prac-77")
        );
        assert_eq!(norm("Patient/p.1").as_deref(), Some("Patient/p.1"));
        assert_eq!(
            norm("RelatedPerson/rp1").as_deref(),
            Some("RelatedPerson/rp1")
        );
        assert_eq!(
            norm("PractitionerRole/r1").as_deref(),
            Some("PractitionerRole/r1")
        );
        assert_eq!(norm("Person/x").as_deref(), Some("Person/x"));
    }

    #[test]
    fn absolute_references_under_the_base_become_relative() {
        let want = Some("Practitioner/prac-77".to_owned());
        assert_eq!(
            norm("https://fhir.hospital.example/R4/Practitioner/prac-77"),
            want
        );
        assert_eq!(
            norm("HTTPS://FHIR.Hospital.Example/R4/Practitioner/prac-77"),
            want
        );
        assert_eq!(
            norm("https://fhir.hospital.example/R4/Practitioner/prac-77/"),
            want
        );
        assert_eq!(
            normalize_fhir_user(
                "https://fhir.hospital.example/R4/Practitioner/prac-77",
                "https://fhir.hospital.example/R4//"
            ),
            want
        );
        assert_eq!(
            normalize_fhir_user("https://fhir.example/Patient/1", "https://fhir.example/")
                .as_deref(),
            Some("Patient/1")
        );
    }

    #[test]
    fn other_bases_are_refused() {
        assert_eq!(norm("https://evil.example/R4/Practitioner/prac-77"), None);
        assert_eq!(
            norm("http://fhir.hospital.example/R4/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("https://fhir.hospital.example/r4/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("https://fhir.hospital.example/R4x/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("https://fhir.hospital.example:8443/R4/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("https://evil@fhir.hospital.example/R4/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("https://fhir.hospital.example.evil.example/R4/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("https://fhir.hospital.example/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("ftp://fhir.hospital.example/R4/Practitioner/prac-77"),
            None
        );
        assert_eq!(
            norm("//fhir.hospital.example/R4/Practitioner/prac-77"),
            None
        );
        // A malformed base accepts no absolute reference, but relative ones still work.
        assert_eq!(
            normalize_fhir_user("https://x/R4/Patient/1", "not a url"),
            None
        );
        assert_eq!(
            normalize_fhir_user("Patient/1", "not a url").as_deref(),
            Some("Patient/1")
        );
    }

    #[test]
    fn other_types_and_shapes_are_refused() {
        for claim in [
            "",
            "/",
            "Practitioner",
            "Practitioner/",
            "/prac-77",
            "Organization/o1",
            "Device/d1",
            "practitioner/prac-77",
            "Practitioner/prac-77/_history/2",
            "Practitioner//prac-77",
            "Practitioner/prac 77",
            "Practitioner/prac_77",
            "Practitioner/prac%2F77",
            "Practitioner/prac-77?x=1",
            "Practitioner/prac-77#frag",
            "Practitioner/ prac-77",
            " Practitioner/prac-77",
            "Practitioner/prác",
            "Practitioner/.",
            "Practitioner/..",
            "https://fhir.hospital.example/R4/Practitioner",
            "https://fhir.hospital.example/R4/Practitioner/a/b",
            "https://fhir.hospital.example/R4/Organization/o1",
            "https://fhir.hospital.example/R4/Practitioner/../Patient/1",
            "https://fhir.hospital.example/R4/Practitioner/prac-77?_format=json",
        ] {
            assert_eq!(norm(claim), None, "{claim:?}");
        }
    }

    #[test]
    fn ids_are_limited_to_64_characters() {
        let ok = format!("Patient/{}", "a".repeat(64));
        let long = format!("Patient/{}", "a".repeat(65));
        assert_eq!(norm(&ok), Some(ok.clone()));
        assert_eq!(norm(&long), None);
    }
}
