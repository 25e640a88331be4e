//! API keys (hashes only).

use sqlx::Row;

use super::*;

impl Store {
    pub async fn api_key_hashes(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT key_hash FROM api_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("key_hash")?))
            .collect()
    }

    /// Stores a key's hash; an existing hash is left alone.
    pub async fn add_api_key(&self, key_hash: &str, label: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_hash, label, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(key_hash)
        .bind(label)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
