use super::*;
use crate::oss::Part;

fn session(size: u64, part_size: u64) -> Session {
    Session {
        v: 1,
        grant: "g".into(),
        sub: "api_key.alice".into(),
        key: "uploads/k.bin".into(),
        upload_id: "U".into(),
        size,
        part_size,
        content_type: "application/octet-stream".into(),
        exp: 0,
    }
}

fn parts(sizes: &[(u32, u64)]) -> Vec<Part> {
    sizes
        .iter()
        .map(|&(number, size)| Part {
            number,
            etag: format!("\"E{number}\""),
            size,
        })
        .collect()
}

#[test]
fn part_sizes_are_checked_and_defaulted() {
    assert_eq!(part_size_for(1, None).unwrap(), DEFAULT_PART_SIZE);
    // 10,000 parts must hold the file: 100 GiB needs parts over 8 MiB.
    assert_eq!(
        part_size_for(100 << 30, None).unwrap(),
        (100u64 << 30).div_ceil(MAX_PARTS)
    );
    assert_eq!(part_size_for(10 << 20, Some(5 << 20)).unwrap(), 5 << 20);
    for bad in [Some(MIN_PART_SIZE - 1), Some(MAX_PART_SIZE + 1)] {
        assert_eq!(part_size_for(1, bad).unwrap_err().code, "invalid_upload_request");
    }
    assert_eq!(
        part_size_for(MIN_PART_SIZE * 10_001, Some(MIN_PART_SIZE))
            .unwrap_err()
            .code,
        "invalid_upload_request"
    );
    let s = session(25 << 20, 5 << 20);
    assert_eq!(s.part_count(), 5);
    let s = session((25 << 20) + 1, 5 << 20);
    assert_eq!((s.part_count(), s.expected_size(6)), (6, 1));
}

#[test]
fn numbers_parse_ascending_and_within_the_session() {
    assert_eq!(parse_numbers("1-4,7", 7).unwrap(), [1, 2, 3, 4, 7]);
    assert_eq!(parse_numbers(" 2 ", 2).unwrap(), [2]);
    for bad in [
        "0",
        "8",
        "3-1",
        "1,1",
        "2,1",
        "x",
        "",
        "1-",
        "-1",
        "1-99999999999999999999",
    ] {
        assert_eq!(
            parse_numbers(bad, 7).unwrap_err().code,
            "invalid_upload_request",
            "{bad}"
        );
    }
    assert_eq!(parse_numbers("1-1000", 10_000).unwrap().len(), 1000);
    assert!(parse_numbers("1-1001", 10_000).is_err());
}

#[test]
fn md5_values_are_base64_of_16_bytes() {
    check_md5("1B2M2Y8AsgTpgAmY7PhCfg==").unwrap();
    for bad in [
        "",
        "abc",
        "1B2M2Y8AsgTpgAmY7PhCfg",
        "AAAA",
        "d41d8cd98f00b204e9800998ecf8427e",
    ] {
        assert_eq!(check_md5(bad).unwrap_err().code, "invalid_md5", "{bad}");
    }
}

#[test]
fn completion_needs_exactly_the_declared_parts() {
    let mib = 1 << 20;
    let s = session(12 * mib + 5, 5 * mib);
    let max = 100 * mib;
    let ok = check_parts(&s, &parts(&[(1, 5 * mib), (2, 5 * mib), (3, 2 * mib + 5)]), max).unwrap();
    assert_eq!(
        ok,
        [(1, "\"E1\"".into()), (2, "\"E2\"".into()), (3, "\"E3\"".into())]
    );
    let refused = |sizes: &[(u32, u64)], max: u64| check_parts(&s, &parts(sizes), max).unwrap_err();
    // A part bigger than part_size, a missing part, an extra part, a short total.
    for sizes in [
        &[(1, 6 * mib), (2, 4 * mib), (3, 2 * mib + 5)][..],
        &[(1, 5 * mib), (3, 2 * mib + 5)],
        &[(1, 5 * mib), (2, 5 * mib)],
        &[(1, 5 * mib), (2, 5 * mib), (3, 2 * mib + 5), (4, 1)],
        &[(1, 5 * mib), (2, 5 * mib), (3, 2 * mib)],
        &[],
    ] {
        let v = refused(sizes, max);
        assert_eq!(
            (v.status.as_u16(), v.code),
            (422, "upload_parts_invalid"),
            "{sizes:?}"
        );
    }
    let v = refused(&[(1, 5 * mib), (2, 5 * mib), (3, 2 * mib + 5)], 12 * mib);
    assert_eq!((v.status.as_u16(), v.code), (413, "upload_too_large"));
}

#[test]
fn handles_bind_grant_caller_and_expiry() {
    use std::collections::BTreeMap;

    use crate::auth::SubjectNamespace;
    use crate::config::AuthMethod;
    use crate::policy::template::Placeholders;

    let grant = crate::grants::tests::grant(
        "multipart = true\nactions = [\"oss:PutObject\", \"oss:ListParts\", \"oss:AbortMultipartUpload\"]",
    );
    let other = crate::grants::tests::grant("");
    let caller = |subject: &str| Principal {
        subject: Some(subject.into()),
        claims: BTreeMap::new(),
        method: AuthMethod::ApiKey,
        namespace: Some(SubjectNamespace::ApiKey),
    };
    let (alice, bob) = (caller("alice"), caller("bob"));
    let placeholders = Placeholders::default();
    let target = Target {
        prefix: "uploads/",
        principal: &alice,
        placeholders: &placeholders,
        request_id: "req-1",
        callback_key: None,
    };
    let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let req = OpenRequest {
        filename: Some("a.bin".into()),
        content_type: None,
        size: 1000,
        part_size: None,
    };
    let mut s = plan(&grant, &target, &req, now).unwrap();
    assert_eq!((s.sub.as_str(), s.part_count()), ("api_key.alice", 1));
    s.upload_id = "U".into();
    let tickets = Tickets::new(Some(vec![9; 32]), std::time::Duration::from_secs(60));
    let handle = tickets.seal(SEAL_DOMAIN, &serde_json::to_vec(&s).unwrap());
    assert_eq!(unseal(&tickets, &handle, &grant, &alice, now).unwrap(), s);
    let code = |r: Result<Session, ApiError>| r.unwrap_err().code;
    assert_eq!(
        code(unseal(&tickets, &handle, &grant, &bob, now)),
        "upload_not_yours"
    );
    assert_eq!(
        code(unseal(&tickets, &handle, &grant, &Principal::anonymous(), now)),
        "upload_not_yours"
    );
    let later = now + TimeDelta::from_std(SESSION_TTL).unwrap();
    assert_eq!(
        code(unseal(&tickets, &handle, &grant, &alice, later)),
        "unknown_upload"
    );
    let other_key = Tickets::new(Some(vec![8; 32]), std::time::Duration::from_secs(60));
    assert_eq!(
        code(unseal(&other_key, &handle, &grant, &alice, now)),
        "unknown_upload"
    );
    // The same grant name without multipart refuses first; another grant's handle is unknown.
    assert_eq!(
        code(unseal(&tickets, &handle, &other, &alice, now)),
        "multipart_not_enabled"
    );
    let mut renamed = grant.clone();
    renamed.name = "h".into();
    assert_eq!(
        code(unseal(&tickets, &handle, &renamed, &alice, now)),
        "unknown_upload"
    );
    assert_eq!(
        code(plan(&other, &target, &req, now).map(|_| s.clone())),
        "multipart_not_enabled"
    );
}
