use super::*;
use std::collections::HashMap;

fn file(toml: &str) -> TelemetrySettings {
    let config = crate::config::Config::from_toml(toml).unwrap();
    let mut p = Problems(Vec::new());
    let settings = config.telemetry.validate(&mut p);
    assert!(p.0.is_empty(), "{:?}", p.0);
    settings
}

fn resolve(settings: &TelemetrySettings, vars: &[(&str, &str)]) -> Resolved {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    settings.resolve(&|name| vars.get(name).cloned())
}

#[test]
fn off_when_neither_the_file_nor_a_variable_names_an_endpoint() {
    let r = resolve(&TelemetrySettings::default(), &[]);
    assert_eq!(r, Resolved::default());
    // Other OTEL variables alone turn nothing on.
    let r = resolve(
        &file("[telemetry]\nservice_name = \"gw\"\nsample_ratio = 0.5\n"),
        &[
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    assert_eq!(r.otlp, None);
}

#[test]
fn the_file_alone_configures_http_with_defaults() {
    let s = file("[telemetry]\notlp_endpoint = \"http://collector:4318/\"\n");
    let otlp = resolve(&s, &[]).otlp.unwrap();
    assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(otlp.protocol, Protocol::HttpProtobuf);
    assert_eq!(otlp.service_name, "tollgate");
    assert_eq!(
        otlp.sampling,
        Sampling {
            parent_based: true,
            ratio: 1.0
        }
    );
}

#[test]
fn variables_win_over_the_file_setting_by_setting() {
    let s = file(
        "[telemetry]\notlp_endpoint = \"http://file:4318\"\nprotocol = \"http/protobuf\"\nservice_name = \"from-file\"\nsample_ratio = 0.25\nresource_attributes = { \"deployment.environment.name\" = \"file\", team = \"llm\" }\n",
    );
    let r = resolve(
        &s,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=prod,region=eu%2Dwest",
            ),
        ],
    );
    let otlp = r.otlp.unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(
        otlp.endpoint, "http://env:4317",
        "grpc takes the base as is"
    );
    assert_eq!(otlp.protocol, Protocol::Grpc);
    assert_eq!(otlp.service_name, "from-env");
    assert_eq!(
        otlp.sampling,
        Sampling {
            parent_based: false,
            ratio: 0.1
        }
    );
    assert_eq!(otlp.resource["deployment.environment.name"], "prod");
    assert_eq!(otlp.resource["region"], "eu-west");
    assert_eq!(otlp.resource["team"], "llm", "the file's own keys stay");
    // What no variable sets comes from the file.
    let otlp = resolve(&s, &[]).otlp.unwrap();
    assert_eq!(otlp.endpoint, "http://file:4318/v1/traces");
    assert_eq!(otlp.service_name, "from-file");
    assert_eq!(otlp.sampling.ratio, 0.25);
    assert!(otlp.sampling.parent_based);
}

#[test]
fn the_traces_endpoint_is_used_as_it_is_and_beats_the_base() {
    let r = resolve(
        &TelemetrySettings::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
        ],
    );
    assert_eq!(r.otlp.unwrap().endpoint, "http://traces:9999/custom");
}

#[test]
fn the_traces_protocol_beats_the_general_one() {
    let r = resolve(
        &TelemetrySettings::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(r.otlp.unwrap().protocol, Protocol::Grpc);
}

#[test]
fn service_name_from_resource_attributes_when_no_service_name_variable() {
    let s = file("[telemetry]\notlp_endpoint = \"http://c:4318\"\nservice_name = \"file\"\n");
    let otlp = resolve(&s, &[("OTEL_RESOURCE_ATTRIBUTES", "service.name=attr,a=b")])
        .otlp
        .unwrap();
    assert_eq!(otlp.service_name, "attr");
    assert!(!otlp.resource.contains_key("service.name"));
    assert_eq!(otlp.resource["a"], "b");
}

#[test]
fn disabled_by_the_sdk_switch_or_the_none_exporter_whatever_the_file_says() {
    let s = file("[telemetry]\notlp_endpoint = \"http://c:4318\"\n");
    assert_eq!(resolve(&s, &[("OTEL_SDK_DISABLED", "true")]).otlp, None);
    assert_eq!(resolve(&s, &[("OTEL_TRACES_EXPORTER", "none")]).otlp, None);
    assert!(resolve(&s, &[("OTEL_SDK_DISABLED", "false")])
        .otlp
        .is_some());
}

#[test]
fn unusable_variables_are_ignored_with_a_warning() {
    let s = file(
        "[telemetry]\notlp_endpoint = \"http://c:4317\"\nprotocol = \"grpc\"\nsample_ratio = 0.5\n",
    );
    let r = resolve(
        &s,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "xray"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ],
    );
    let otlp = r.otlp.unwrap();
    assert_eq!(otlp.protocol, Protocol::Grpc, "the file's protocol applies");
    assert_eq!(otlp.sampling.ratio, 0.5, "the file's ratio applies");
    assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
    let r = resolve(
        &s,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ],
    );
    assert_eq!(r.otlp.unwrap().sampling.ratio, 1.0);
    assert_eq!(r.warnings.len(), 1);
}

#[test]
fn empty_variables_count_as_unset() {
    let s = file("[telemetry]\notlp_endpoint = \"http://file:4318\"\n");
    let otlp = resolve(
        &s,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_SERVICE_NAME", " "),
        ],
    )
    .otlp
    .unwrap();
    assert_eq!(otlp.endpoint, "http://file:4318/v1/traces");
    assert_eq!(otlp.service_name, "tollgate");
}

#[test]
fn the_file_is_validated_with_key_paths() {
    let config = crate::config::Config::from_toml(
        "[telemetry]\notlp_endpoint = \"collector:4318\"\nprotocol = \"http/json\"\nsample_ratio = 1.5\n",
    )
    .unwrap();
    let problems = config.validate().unwrap_err().problems;
    for key in [
        "telemetry.otlp_endpoint",
        "telemetry.protocol",
        "telemetry.sample_ratio",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "{key}: {problems:?}"
        );
    }
}
