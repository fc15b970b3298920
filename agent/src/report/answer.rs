//! Prometheus' HTTP API answers (`/api/v1/query`, `/api/v1/query_range`), decoded
//! from untrusted bytes: no I/O here, so the fuzzers call it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One labelled value of an instant query.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One labelled series of a range query: (unix seconds, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

/// What an answer holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Result {
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
    /// A scalar, as a sample without labels.
    Scalar(Sample),
    String,
}

/// A decoded answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `success`, or `error` with `error_type` and `error`.
    pub success: bool,
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub result: Option<Result>,
}

#[derive(Deserialize)]
struct Raw {
    status: String,
    #[serde(default)]
    data: Option<RawData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum RawData {
    Vector(Vec<RawSample>),
    Matrix(Vec<RawSeries>),
    Scalar(RawPoint),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: RawPoint,
}

#[derive(Deserialize)]
struct RawSeries {
    metric: BTreeMap<String, String>,
    values: Vec<RawPoint>,
}

/// `[unix seconds, "value"]`; values are strings (`"NaN"`, `"+Inf"` included).
#[derive(Deserialize)]
struct RawPoint(f64, String);

impl RawPoint {
    fn value(&self) -> f64 {
        self.1.parse().unwrap_or(f64::NAN)
    }
}

/// Decodes an answer's body. `Err` when it is not an answer of Prometheus' API at
/// all (not JSON, or without `status`).
pub fn decode(body: &str) -> std::result::Result<Answer, serde_json::Error> {
    let raw: Raw = serde_json::from_str(body)?;
    let result = raw.data.map(|d| match d {
        RawData::Vector(v) => Result::Vector(
            v.into_iter()
                .map(|s| Sample {
                    value: s.value.value(),
                    labels: s.metric,
                })
                .collect(),
        ),
        RawData::Matrix(m) => Result::Matrix(
            m.into_iter()
                .map(|s| Series {
                    points: s.values.iter().map(|p| (p.0, p.value())).collect(),
                    labels: s.metric,
                })
                .collect(),
        ),
        RawData::Scalar(p) => Result::Scalar(Sample {
            labels: BTreeMap::new(),
            value: p.value(),
        }),
        RawData::String(_) => Result::String,
    });
    Ok(Answer {
        success: raw.status == "success",
        error_type: raw.error_type,
        error: raw.error,
        warnings: raw.warnings,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode() {
        let a = decode(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1700000000.5,"NaN"]}]}}"#,
        )
        .expect("vector");
        let Some(Result::Vector(v)) = a.result else {
            panic!("not a vector")
        };
        assert!(v[0].value.is_nan());
        assert_eq!(v[0].labels["a"], "b");
        let a = decode(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"+Inf"]]}]},"warnings":["w"]}"#,
        )
        .expect("matrix");
        assert_eq!(a.warnings, ["w"]);
        let Some(Result::Matrix(m)) = a.result else {
            panic!("not a matrix")
        };
        assert_eq!(m[0].points[1], (2.0, f64::INFINITY));
        let a = decode(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .expect("error");
        assert!(!a.success);
        assert_eq!(a.error_type.as_deref(), Some("bad_data"));
        assert!(decode("<html>").is_err());
        // Real answers (agent/tests/data/make-prometheus-answers.sh).
        let a = decode(include_str!("../../tests/data/prometheus-vector.json")).expect("vector");
        let Some(Result::Vector(v)) = a.result else {
            panic!("not a vector")
        };
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].labels["connection_security_policy"], "mutual_tls");
        assert_eq!(v[0].value, 14.0);
        let a = decode(include_str!("../../tests/data/prometheus-matrix.json")).expect("matrix");
        let Some(Result::Matrix(m)) = a.result else {
            panic!("not a matrix")
        };
        assert_eq!(m[0].labels["instance"], "node-1:9477");
        assert_eq!(m[0].points.len(), 6);
        assert!(decode(r#"{"hello":"world"}"#).is_err());
    }
}
