//! The `model` of a `multipart/form-data` request (audio transcriptions and translations,
//! image edits and variations), read with `multer`: the model allow-list and routing apply to
//! what a form names as much as to a JSON body.

use bytes::Bytes;

/// The `model` field of a form whose `content-type` is `content_type`; `Ok(None)` when the
/// form names none, `Err` with a reason when it is not a readable form.
pub(super) async fn model(content_type: &str, body: &Bytes) -> Result<Option<String>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let body = body.clone();
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        if field.name() == Some("model") {
            return field.text().await.map(Some).map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> Bytes {
        let mut out = String::new();
        for (name, value) in fields {
            out.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        out.push_str("--XyZ--\r\n");
        Bytes::from(out)
    }

    #[tokio::test]
    async fn reads_the_model_field_wherever_it_is() {
        let ct = "multipart/form-data; boundary=XyZ";
        let body = form(&[("file", "RIFF...."), ("model", "whisper-1")]);
        assert_eq!(model(ct, &body).await, Ok(Some("whisper-1".into())));
        let none = form(&[("file", "RIFF....")]);
        assert_eq!(model(ct, &none).await, Ok(None));
        assert!(
            model("multipart/form-data", &body).await.is_err(),
            "no boundary"
        );
        assert!(model(ct, &Bytes::from_static(b"garbage")).await.is_err());
        let first = Bytes::from_static(b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-large\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XyZ--\r\n");
        assert_eq!(model(ct, &first).await, Ok(Some("whisper-large".into())));
    }
}
