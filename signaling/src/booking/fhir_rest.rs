//! The hospital's FHIR R4 server over REST: `GET {base}/Appointment/{id}` and
//! `GET {base}/PractitionerRole/{id}`, authorized by SMART Backend Services, with timeouts
//! and bounded retries. When it cannot be reached, the answer is an error (joins are then
//! refused with `booking_unavailable`), never a default.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::StatusCode;

use super::{BookingError, BookingSystem, SmartAuth, is_fhir_id};
use crate::fhir::{Appointment, PractitionerRole, parse_appointment, parse_practitioner_role};

/// Largest resource we read; an appointment is a few kilobytes.
const MAX_RESOURCE_BYTES: usize = 1 << 20;

pub struct FhirBooking {
    http: reqwest::Client,
    base_url: String,
    auth: Arc<SmartAuth>,
    retries: u32,
}

impl FhirBooking {
    pub fn new(http: reqwest::Client, base_url: &str, auth: Arc<SmartAuth>, retries: u32) -> Self {
        FhirBooking {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth,
            retries,
        }
    }

    /// Access tokens fetched so far (a metric).
    pub fn token_fetches(&self) -> u64 {
        self.auth.fetches.load(Ordering::Relaxed)
    }

    async fn read(&self, kind: &str, id: &str) -> Result<Vec<u8>, BookingError> {
        if !is_fhir_id(id) {
            return Err(BookingError::NotFound);
        }
        let url = format!("{}/{kind}/{id}", self.base_url);
        let mut last = String::new();
        let mut refreshed = false;
        let mut attempt = 0;
        while attempt <= self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt - 1))).await;
            }
            attempt += 1;
            let token = self.auth.token().await?;
            let resp = match self
                .http
                .get(&url)
                .bearer_auth(token)
                .header("accept", "application/fhir+json")
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match resp.status() {
                StatusCode::OK => {
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| BookingError::Unavailable(e.to_string()))?;
                    if body.len() > MAX_RESOURCE_BYTES {
                        return Err(BookingError::Invalid(format!(
                            "{kind} larger than {MAX_RESOURCE_BYTES} bytes"
                        )));
                    }
                    return Ok(body.to_vec());
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => return Err(BookingError::NotFound),
                StatusCode::UNAUTHORIZED if !refreshed => {
                    // The token may have been revoked early: get a new one, once, for free.
                    refreshed = true;
                    attempt -= 1;
                    self.auth.invalidate().await;
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    last = format!("{kind} read answered {s}")
                }
                s => {
                    return Err(BookingError::Unavailable(format!(
                        "{kind} read answered {s}"
                    )));
                }
            }
        }
        Err(BookingError::Unavailable(last))
    }
}

impl BookingSystem for FhirBooking {
    fn appointment<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Appointment, BookingError>> {
        Box::pin(async move {
            let body = self.read("Appointment", id).await?;
            parse_appointment(&body).map_err(|e| BookingError::Invalid(e.to_string()))
        })
    }

    fn practitioner_role<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PractitionerRole, BookingError>> {
        Box::pin(async move {
            let body = self.read("PractitionerRole", id).await?;
            parse_practitioner_role(&body).map_err(|e| BookingError::Invalid(e.to_string()))
        })
    }
}
