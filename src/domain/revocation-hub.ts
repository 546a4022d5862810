/** Someone who wants to hear of revocations: the replica's cache, each WatchRevocations stream. */
export interface RevocationListener {
  /** A token was revoked: its digest key (base64) and id. */
  revoked(key: string, tokenId: string): void;
  /** Every revocation committed before `atMs` has been heard. */
  confirmed(atMs: number): void;
  /** Revocations may have been missed: drop everything cached. */
  reset(): void;
}

/**
 * Fans the store's revocation notices out to every listener in this process:
 * the introspection cache and every gateway's WatchRevocations stream. One
 * mechanism for both, so a gateway's cache is exactly as fresh as ours.
 */
export class RevocationHub {
  private readonly listeners = new Set<RevocationListener>();
  private confirmed = 0;

  /** Until when (ms) every revocation is known to have been heard; 0 if never. */
  get confirmedAt(): number {
    return this.confirmed;
  }

  /** Adds a listener; returns the function that removes it. */
  subscribe(listener: RevocationListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Tells every listener a token was revoked. */
  revoked(key: string, tokenId: string): void {
    for (const l of this.listeners) l.revoked(key, tokenId);
  }

  /** Tells every listener nothing was missed until `atMs`. */
  confirm(atMs: number): void {
    if (atMs <= this.confirmed) return;
    this.confirmed = atMs;
    for (const l of this.listeners) l.confirmed(atMs);
  }

  /** Tells every listener something may have been missed. */
  reset(): void {
    for (const l of this.listeners) l.reset();
  }
}
