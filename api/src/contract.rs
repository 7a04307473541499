//! The API's OpenAPI 3 contract, generated from the handlers and types (`utoipa`), served at
//! `/openapi.json` and checked into `api/openapi.json` (a test fails when they drift).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::Refusal;

/// The issue request's body (as `--identity body`, the default, requires it). With
/// `--identity header:NAME` or `jwt` the body may be empty or omit `userId`; a `userId` that
/// disagrees with the authenticated user is refused.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the body; the request stage parses it by hand
#[schema(as = IssueBody)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// The user asking for the coupon (positive, at most 2^63-1).
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64, format = Int64)]
    #[serde(rename = "userId")]
    pub user_id: u64,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("Only with --identity jwt"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "coupon-api",
        description = "First-come-first-served coupon issuance: 202 only after the broker acknowledged the event."
    ),
    paths(
        crate::issue,
        crate::coupon,
        crate::status::request,
        crate::status::user_coupons,
        crate::healthz,
        crate::readyz,
        crate::metrics,
        crate::openapi_json
    ),
    components(schemas(
        IssueBody,
        Refusal,
        crate::issue::Accepted,
        crate::CouponView,
        crate::status::RequestView,
        crate::status::UserCoupons
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The contract as pretty JSON, as checked in.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `api/openapi.json` is what the code generates; after a change to the API, regenerate it
    /// with `UPDATE_CONTRACT=1 cargo test -p coupon-api contract` and review the diff.
    #[test]
    fn the_checked_in_contract_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = format!("{}\n", openapi_json());
        if std::env::var_os("UPDATE_CONTRACT").is_some() {
            std::fs::write(&path, &generated).expect("write api/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "api/openapi.json drifted from the code: UPDATE_CONTRACT=1 cargo test -p coupon-api contract"
        );
    }

    /// A generated client types each integer by its `format`: a bound beyond it breaks the
    /// client on the values the server accepts (couponId went to 2^32-1 under `int32`).
    #[test]
    fn every_integer_bound_fits_its_format() {
        fn walk(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
            if let Some(o) = v.as_object() {
                let limit = match o.get("format").and_then(|f| f.as_str()) {
                    Some("int32") => Some(i32::MAX as f64),
                    Some("int64") => Some(i64::MAX as f64),
                    _ => None,
                };
                if let Some(limit) = limit {
                    for bound in ["maximum", "minimum"] {
                        if let Some(b) = o.get(bound).and_then(|b| b.as_f64())
                            && b.abs() > limit
                        {
                            bad.push(format!("{at}: {bound} {b} beyond its format"));
                        }
                    }
                }
                for (k, child) in o {
                    walk(child, &format!("{at}/{k}"), bad);
                }
            } else if let Some(a) = v.as_array() {
                for (i, child) in a.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), bad);
                }
            }
        }
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).expect("json");
        let mut bad = Vec::new();
        walk(&doc, "", &mut bad);
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn every_refusal_code_is_in_the_contract() {
        let doc = openapi_json();
        for code in crate::error::ApiError::CODES {
            assert!(doc.contains(&format!("\"{code}\"")), "{code} missing");
        }
    }
}
