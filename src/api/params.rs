//! Path and header parameters as the API document states them (format and pattern included),
//! parsed by the contract's own parsers.
//!
//! poem-openapi 5.1 compiles a `pattern` validator's regex on every request
//! (validation/pattern.rs), which cut the endpoint's throughput by more than half; these types
//! publish the pattern in the schema and check it with `TenantId::parse` / `JobName::parse`.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};

use crate::events::{JobName, TenantId};

pub const TENANT_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
pub const JOB_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$";

/// The `x-tenantid` header: a hyphenated UUID.
pub struct TenantParam(pub TenantId);

/// The `jobName` path segment.
pub struct JobNameParam(pub JobName);

macro_rules! string_parameter {
    ($param:ident, $inner:ty, $name:literal, $schema:expr) => {
        impl Type for $param {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }

        impl ParseFromParameter for $param {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                <$inner>::parse(value)
                    .map($param)
                    .map_err(ParseError::custom)
            }
        }
    };
}

/// The tenant the API document's examples use. `jobstats demo` publishes its jobs under it, so
/// "Try it out" and generated tests reach real data.
pub const EXAMPLE_TENANT: &str = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";

string_parameter!(
    TenantParam,
    TenantId,
    "string_tenant_id",
    MetaSchema {
        format: Some("uuid"),
        example: Some(EXAMPLE_TENANT.into()),
        pattern: Some(TENANT_PATTERN.to_owned()),
        min_length: Some(36),
        max_length: Some(36),
        ..MetaSchema::new("string")
    }
);

string_parameter!(
    JobNameParam,
    JobName,
    "string_job_name",
    MetaSchema {
        // The API document's example job, which the demo runs.
        example: Some("tokenExpiry".into()),
        pattern: Some(JOB_NAME_PATTERN.to_owned()),
        min_length: Some(1),
        max_length: Some(JobName::MAX_LEN),
        ..MetaSchema::new("string")
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The published patterns and the parsers agree (a client validating with the document
    /// never sends what the server rejects, nor the reverse).
    #[test]
    fn patterns_and_parsers_agree() {
        let tenant = regex::Regex::new(TENANT_PATTERN).unwrap();
        let job = regex::Regex::new(JOB_NAME_PATTERN).unwrap();
        let long = "a".repeat(128);
        let too_long = "a".repeat(129);
        for text in [
            "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11",
            "3F0C7F7E-8A51-4A52-9F7E-0D6A4C1B2E11",
            "3f0c7f7e8a514a529f7e0d6a4c1b2e11",
            "{3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e1}",
            "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e1g",
            "",
            "nightly-report",
            "a",
            "9.b_c:d-e",
            "-leading",
            ".hidden",
            "with space",
            "ünicode",
            long.as_str(),
            too_long.as_str(),
        ] {
            assert_eq!(
                tenant.is_match(text),
                TenantParam::parse_from_parameter(text).is_ok(),
                "tenant {text:?}"
            );
            assert_eq!(
                job.is_match(text),
                JobNameParam::parse_from_parameter(text).is_ok(),
                "job {text:?}"
            );
        }
    }
}
