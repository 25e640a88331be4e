//! API keys: only their salted MACs are stored (`hs256$<salt hex>$<mac hex>`, see
//! [`crate::http::StoredKey`]); the key itself never is.

use sqlx::Row;

use super::*;

impl Store {
    /// Every stored `(key_hash, label)`.
    pub async fn api_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key_hash, label FROM api_keys ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_hash")?, r.try_get("label")?)))
            .collect()
    }

    /// Every stored key hash.
    pub async fn api_key_hashes(&self) -> Result<Vec<String>> {
        Ok(self.api_keys().await?.into_iter().map(|(h, _)| h).collect())
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

    /// Makes `keys` (hash, label) the whole stored set, in one transaction: a key that is no
    /// longer configured is gone.
    pub async fn replace_api_keys(&self, keys: &[(String, String)], now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM api_keys")
            .execute(&mut *tx)
            .await?;
        for (hash, label) in keys {
            sqlx::query(
                "INSERT INTO api_keys (key_hash, label, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_hash) DO NOTHING",
            )
            .bind(hash)
            .bind(label)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
