import { performance } from "node:perf_hooks";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ContextValues, Interceptor } from "@connectrpc/connect";

/** The status code of success (Connect's `Code` has no member for it). */
const OK = 0;

/** Which server took a call: the grpc-js port or the Connect (HTTP) port. */
export type ServerName = "grpc" | "http";

/**
 * Records one finished call: its status code (the gRPC numbering, which
 * Connect's `Code` shares; 0 is OK), when it started (`performance.now()`),
 * and the call's context values (peer address, request id), read only by a
 * recorder that logs the call.
 */
export type CallRecorder = (code: number, startMs: number, values: CallFacts) => void;

/** Where a recorder finds the call's facts; a grpc-js context builds them only when asked. */
export interface CallFacts {
  readonly values: ContextValues;
}

/**
 * Told about every call both servers finish, for metrics and the per-request
 * log. Transports ask for one recorder per method when they mount it (so the
 * per-call work is an array index, not a label lookup) and call it once per
 * call. Implemented in `src/observability`; the servers know only this shape.
 */
export interface CallObserver {
  /** The recorder of one method on one server; called at mount time (or on a method's first call). */
  recorder(server: ServerName, method: DescMethod): CallRecorder;
  /**
   * A plain HTTP request (not an RPC) arrives on the HTTP port: returns what
   * to call once it is answered, or undefined when nobody wants it (so the
   * server adds no listener). For the per-request log.
   */
  httpRequest?(): HttpRequestRecorder | undefined;
}

/** Records one answered plain HTTP request; `path` is the URL path without the query. */
export type HttpRequestRecorder = (method: string, path: string, status: number, requestId: string, peer: string | undefined) => void;

/**
 * The Connect server's side of {@link CallObserver}: an interceptor that
 * times each call (a stream until its last message or failure) and reports
 * its final code. Put it first, so it sees the code the client gets.
 */
export function observeCalls(observer: CallObserver): Interceptor {
  const recorders = new Map<DescMethod, CallRecorder>();
  const recorderOf = (method: DescMethod): CallRecorder => {
    let record = recorders.get(method);
    if (record === undefined) {
      record = observer.recorder("http", method);
      recorders.set(method, record);
    }
    return record;
  };
  return (next) => async (req) => {
    const record = recorderOf(req.method);
    const start = performance.now();
    const facts: CallFacts = { values: req.contextValues };
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next(req);
    } catch (err) {
      record(ConnectError.from(err).code, start, facts);
      throw err;
    }
    if (!res.stream) {
      record(OK, start, facts);
      return res;
    }
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        // Ended early by the client (the generator is returned): CANCELLED.
        let code: number = Code.Canceled;
        try {
          yield* messages;
          code = OK;
        } catch (err) {
          code = ConnectError.from(err).code;
          throw err;
        } finally {
          record(code, start, facts);
        }
      })(),
    };
  };
}
