/**
 * Revocation notices pushed from the store to every replica, over PostgreSQL
 * LISTEN/NOTIFY (PGlite supports it in-process).
 *
 * A LISTEN connection can die silently (a half-open TCP connection looks
 * alive: node-postgres #967, #3003), so the channel proves itself: every
 * heartbeat interval it NOTIFYs itself a nonce and waits to receive it.
 * PostgreSQL delivers notifications in commit order, so receiving the
 * heartbeat sent at time T proves every revocation committed before T has
 * been received: `confirmed(T)`. No heartbeat back within the timeout: the
 * channel is declared lost, its connection destroyed and a new one opened
 * with back-off; once listening again, `restored()` tells the owner to catch
 * up on what it missed from the revocation log (migration 0009), whose
 * positions every notice carries.
 *
 * Never run the listener through a transaction-pooling proxy (PgBouncer in
 * transaction mode): LISTEN is session state and would be lost or land on
 * another client's session.
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "../domain/ports.js";

/** The NOTIFY channel. */
export const REVOCATION_CHANNEL = "token_revocations";
/**
 * Payload prefix of a revoked opaque token: `r:<base64 digest>:<token id>:<ms>:<position>`,
 * where `<ms>` is the database's clock (epoch milliseconds) when the revoking
 * statement ran, for the propagation-lag metric, and `<position>` its place in
 * the revocation log. Older writers omit `:<position>`, or both.
 */
export const REVOKED_PREFIX = "r:";
/** Payload prefix of a log position with nothing to evict (a legacy jti): `l:<position>`. */
export const LOGGED_PREFIX = "l:";
/** Payload prefix of a heartbeat: `h:<replica nonce>:<sequence>`. */
const HEARTBEAT_PREFIX = "h:";

/** An open LISTEN session. */
export interface ListenSession {
  /** The PostgreSQL backend process id of the session, when it has one (for operators and tests). */
  readonly backendPid?: number;
  /** NOTIFYs the channel from this session. */
  notify(payload: string): Promise<void>;
  /** Ends the session; `onLost` is not called for it. */
  close(): Promise<void>;
}

/** Opens a LISTEN session on the channel; `onLost` is called at most once if it dies. */
export type ListenSessionFactory = (onPayload: (payload: string) => void, onLost: (error: unknown) => void) => Promise<ListenSession>;

/** What the channel tells its owner. */
export interface RevocationHandlers {
  /**
   * A token was revoked: its digest key (base64), id, and when the database
   * committed it (epoch ms by the database's clock), if the notice says.
   */
  revoked(key: string, tokenId: string, committedAtMs: number | undefined, position: number | undefined): void;
  /** A revocation log position with nothing to evict (a legacy jti). */
  noticed?(position: number): void;
  /** Every revocation committed before `atMs` has been received. */
  confirmed(atMs: number): void;
  /** Listening (again): what was missed while deaf must be caught up on (or, failing that, dropped). */
  restored(): void;
  /** The channel was lost; cached answers age out within the staleness bound. */
  lost(error: unknown): void;
}

/** Timing of the channel. */
export interface RevocationChannelOptions {
  readonly heartbeatMs: number;
  /** No heartbeat back within this: the channel is lost. */
  readonly timeoutMs: number;
  /** Longest wait between reconnection attempts. */
  readonly maxBackoffMs: number;
  /**
   * Tests only: hold every payload this long before acting on it, in order,
   * to make one replica lag behind the others. 0 or unset in production.
   */
  readonly noticeDelayMs?: number;
}

/** The self-checking revocation channel of one replica. */
export class RevocationChannel {
  private session: ListenSession | undefined;
  private stopped = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private reconnect: NodeJS.Timeout | undefined;
  private backoffMs = 100;
  private readonly nonce = randomBytes(6).toString("base64url");
  private sequence = 0;
  /** Heartbeats sent and not yet seen: sequence → time sent. */
  private readonly pending = new Map<number, number>();
  private generation = 0;
  private listens = 0;
  private losses = 0;

  constructor(
    private readonly open: ListenSessionFactory,
    private readonly handlers: RevocationHandlers,
    private readonly options: RevocationChannelOptions,
    private readonly log: Logger,
  ) {}

  /** Whether the channel is listening now. */
  get up(): boolean {
    return this.session !== undefined;
  }

  /**
   * For metrics: whether listening, how often the channel was (re)opened
   * after the first time, and how often it was lost.
   */
  stats(): { up: boolean; reconnects: number; losses: number } {
    return { up: this.up, reconnects: Math.max(0, this.listens - 1), losses: this.losses };
  }

  /** The backend pid of the LISTEN session, if listening on PostgreSQL. */
  get backendPid(): number | undefined {
    return this.session?.backendPid;
  }

  /** Opens the channel; resolves once listening (or rejects if the first attempt fails, after scheduling retries). */
  async start(): Promise<void> {
    this.heartbeat = setInterval(() => this.beat(), this.options.heartbeatMs);
    this.heartbeat.unref();
    await this.connect();
  }

  /** Closes the channel for good. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.reconnect) clearTimeout(this.reconnect);
    const session = this.session;
    this.session = undefined;
    await session?.close().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    const generation = ++this.generation;
    try {
      const session = await this.open(
        (payload) => this.deliver(payload, generation),
        (error) => this.fail(error, generation),
      );
      if (this.stopped || generation !== this.generation) {
        await session.close().catch(() => undefined);
        return;
      }
      this.session = session;
      this.listens++;
      this.pending.clear();
      this.backoffMs = 100;
      this.handlers.restored();
      this.log.info({ channel: REVOCATION_CHANNEL }, "revocation channel listening");
      this.beat();
    } catch (error) {
      this.fail(error, generation);
      throw error;
    }
  }

  private deliver(payload: string, generation: number): void {
    const delay = this.options.noticeDelayMs ?? 0;
    if (delay <= 0) this.receive(payload, generation);
    // Equal delays fire in the order set: notices keep their order.
    else setTimeout(() => this.receive(payload, generation), delay).unref();
  }

  private receive(payload: string, generation: number): void {
    if (generation !== this.generation) return;
    if (payload.startsWith(REVOKED_PREFIX)) {
      // `<digest>:<id>`, `…:<ms>` or `…:<ms>:<position>`; base64 and UUIDs hold no colon.
      const [key, tokenId, ms, pos] = payload.slice(REVOKED_PREFIX.length).split(":", 4);
      if (key && tokenId) {
        const committedAtMs = ms === undefined ? undefined : Number(ms);
        const position = pos === undefined ? undefined : Number(pos);
        this.handlers.revoked(
          key,
          tokenId,
          committedAtMs !== undefined && Number.isFinite(committedAtMs) ? committedAtMs : undefined,
          position !== undefined && Number.isSafeInteger(position) ? position : undefined,
        );
      }
    } else if (payload.startsWith(LOGGED_PREFIX)) {
      const position = Number(payload.slice(LOGGED_PREFIX.length));
      if (Number.isSafeInteger(position)) this.handlers.noticed?.(position);
    } else if (payload.startsWith(HEARTBEAT_PREFIX)) {
      const [nonce, seq] = payload.slice(HEARTBEAT_PREFIX.length).split(":");
      if (nonce !== this.nonce) return; // another replica's heartbeat
      const sentAt = this.pending.get(Number(seq));
      if (sentAt === undefined) return;
      // Everything sent earlier is proven too.
      for (const key of this.pending.keys()) if (key <= Number(seq)) this.pending.delete(key);
      this.handlers.confirmed(sentAt);
    }
  }

  private beat(): void {
    const session = this.session;
    if (session === undefined) return;
    const now = Date.now();
    for (const sentAt of this.pending.values()) {
      if (now - sentAt > this.options.timeoutMs) {
        this.fail(new Error(`no heartbeat back within ${this.options.timeoutMs} ms`), this.generation);
        return;
      }
    }
    const seq = ++this.sequence;
    this.pending.set(seq, now);
    session.notify(`${HEARTBEAT_PREFIX}${this.nonce}:${seq}`).catch((error: unknown) => this.fail(error, this.generation));
  }

  private fail(error: unknown, generation: number): void {
    if (generation !== this.generation || this.stopped) return;
    const session = this.session;
    const wasUp = session !== undefined;
    this.session = undefined;
    this.pending.clear();
    this.generation++;
    void session?.close().catch(() => undefined);
    if (wasUp) {
      this.losses++;
      this.handlers.lost(error);
      this.log.warn({ err: error, channel: REVOCATION_CHANNEL }, "revocation channel lost; cached answers age out, reconnecting");
    }
    if (this.reconnect) clearTimeout(this.reconnect);
    this.reconnect = setTimeout(() => {
      this.reconnect = undefined;
      this.connect().catch(() => undefined);
    }, this.backoffMs);
    this.reconnect.unref();
    this.backoffMs = Math.min(this.backoffMs * 2, this.options.maxBackoffMs);
  }
}
