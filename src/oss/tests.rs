use super::*;

#[test]
fn answers_parse_as_oss_writes_them() {
    let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>0004B999EF5A239BB9138C6227D6****</UploadId></InitiateMultipartUploadResult>"#;
    assert_eq!(xml::upload_id(body).unwrap(), "0004B999EF5A239BB9138C6227D6****");
    assert!(xml::upload_id(b"<InitiateMultipartUploadResult/>").is_err());
    assert!(xml::upload_id(b"<html>proxy</html>").is_err());

    let page = xml::list_parts(
        br#"<ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>
<PartNumberMarker>0</PartNumberMarker><NextPartNumberMarker>2</NextPartNumberMarker><MaxParts>2</MaxParts>
<IsTruncated>true</IsTruncated>
<Part><PartNumber>1</PartNumber><LastModified>2012-02-23T07:01:34.000Z</LastModified><ETag>&quot;3349DC700140D7F86A0784842780****&quot;</ETag><HashCrc64ecma>1</HashCrc64ecma><Size>6291456</Size></Part>
<Part><PartNumber>2</PartNumber><LastModified>2012-02-23T07:01:12.000Z</LastModified><ETag>"AAAA"</ETag><Size>5</Size></Part>
</ListPartsResult>"#,
    )
    .unwrap();
    assert!(page.truncated);
    assert_eq!(page.next_marker, Some(2));
    assert_eq!(
        page.parts,
        [
            Part {
                number: 1,
                etag: "\"3349DC700140D7F86A0784842780****\"".into(),
                size: 6291456
            },
            Part {
                number: 2,
                etag: "\"AAAA\"".into(),
                size: 5
            }
        ]
    );
    let empty =
        xml::list_parts(b"<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>").unwrap();
    assert!(!empty.truncated && empty.parts.is_empty() && empty.next_marker.is_none());

    let e = xml::error(
        b"<?xml version=\"1.0\"?><Error><Code>NoSuchUpload</Code><Message>gone</Message><RequestId>RID</RequestId><HostId>h</HostId></Error>",
    );
    assert_eq!(
        (e.code.as_deref(), e.message.as_deref(), e.request_id.as_deref()),
        (Some("NoSuchUpload"), Some("gone"), Some("RID"))
    );
    assert!(xml::error(b"<html>502 Bad Gateway</html>").code.is_none());
    assert!(xml::error(&[0xff, 0xfe]).code.is_none());
}

#[test]
fn the_complete_body_escapes_etags() {
    let body = xml::complete_body(&[(1, "\"A<B\"".into()), (2, "\"C\"".into())]);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("<Part><PartNumber>1</PartNumber><ETag>&quot;A&lt;B&quot;</ETag></Part>"));
    assert!(text.ends_with(
        "<Part><PartNumber>2</PartNumber><ETag>&quot;C&quot;</ETag></Part></CompleteMultipartUpload>"
    ));
}

#[test]
fn only_5xx_and_transport_errors_are_retried() {
    let service = |status| OssCallError::Service {
        status,
        code: "X".into(),
        message: String::new(),
        request_id: None,
    };
    assert!(service(500).retryable() && service(503).retryable());
    assert!(!service(403).retryable() && !service(409).retryable() && !service(404).retryable());
    assert!(OssCallError::Transport("timed out".into()).retryable());
    assert!(!OssCallError::Sign("bad".into()).retryable());
}
