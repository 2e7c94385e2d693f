//! Uploads: scoped by tenant, listed newest first, gone once deleted or expired, and handed to
//! the janitor once expired.

use super::*;

fn file(tenant: &str, name: &str, expires_in: i64) -> StoredFile {
    let id = uuid::Uuid::now_v7().to_string();
    StoredFile {
        object_key: format!("uploads/{id}/{name}"),
        id,
        tenant: TenantId::parse(tenant).unwrap(),
        name: name.into(),
        content_type: "image/png".into(),
        size: 3,
        sha256: "ab".repeat(32),
        metadata: serde_json::json!({"purpose": name}),
        created_at: now(),
        expires_at: now() + chrono::Duration::seconds(expires_in),
    }
}

pub async fn files_are_scoped_listed_deleted_and_expire(ledger: Arc<dyn Ledger>) {
    let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
    let first = file("a", "first.png", 3600);
    let second = file("a", "second.png", 3600);
    let expired = file("a", "old.png", -1);
    for f in [&first, &second, &expired] {
        ledger.insert_file(f).await.unwrap();
    }
    let read = ledger.get_file(&a, &first.id).await.unwrap().unwrap();
    assert_eq!(read.metadata, first.metadata);
    assert_eq!(read.size, 3);
    assert!(ledger.get_file(&b, &first.id).await.unwrap().is_none());
    assert!(ledger.get_file(&a, &expired.id).await.unwrap().is_none());
    let listed: Vec<String> = ledger
        .list_files(&a, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(listed, vec![second.id.clone(), first.id.clone()]);
    let after = ledger.list_files(&a, Some(&second.id), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(ledger.list_files(&b, None, 10).await.unwrap().is_empty());
    // Another tenant cannot delete it; its owner can, once.
    assert!(!ledger.mark_file_deleted(Some(&b), &first.id).await.unwrap());
    assert!(ledger.mark_file_deleted(Some(&a), &first.id).await.unwrap());
    assert!(!ledger.mark_file_deleted(Some(&a), &first.id).await.unwrap());
    assert!(ledger.get_file(&a, &first.id).await.unwrap().is_none());
    // The janitor gets the expired one, and marks it.
    let due = ledger.expired_files(now(), 10).await.unwrap();
    assert_eq!(due, vec![(expired.id.clone(), expired.object_key.clone())]);
    assert!(ledger.mark_file_deleted(None, &expired.id).await.unwrap());
    assert!(ledger.expired_files(now(), 10).await.unwrap().is_empty());
}
