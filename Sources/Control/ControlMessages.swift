import BlockIO
import Foundation
import MirrorModel

/// A request on a mirror daemon's control socket: one JSON object on one line (docs/CONTROL.md).
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Verb: String, Codable, Sendable, CaseIterable {
        /// The mirror's status (`MirrorStatus`).
        case status
        /// Attach `target` and start the recovery (`mdadm --add`).
        case add
        /// Change the speed limits (`speedMin`, `speedMax`; either may be absent: unchanged).
        case speed
        /// Compare source and target (`repair`: rewrite mismatches on the target); answers when done.
        case check
        /// Mark the target faulty (`mdadm --fail`): writes go to the source alone.
        case fail
        /// Detach a failed target (`mdadm --remove`).
        case remove
        /// Switch the export onto the in-sync target (`keepOld`: the old source becomes the target).
        case complete
        /// Swap the roles of an in-sync mirror: the target serves, the source becomes its target.
        case reverse
        /// Drain, flush both legs, save the bitmap and exit; answers with the final report.
        case stop
    }

    public var verb: Verb
    /// `add`: the target device or image.
    public var target: String?
    /// `speed`: KiB/s the copy keeps under foreground load.
    public var speedMin: UInt64?
    /// `speed`: KiB/s the copy never exceeds; 0 removes the limit.
    public var speedMax: UInt64?
    /// `check`: rewrite mismatching sectors on the target from the source.
    public var repair: Bool?
    /// `complete`: keep the old source as the target, written on every write.
    public var keepOld: Bool?

    public init(verb: Verb, target: String? = nil, speedMin: UInt64? = nil, speedMax: UInt64? = nil, repair: Bool? = nil,
                keepOld: Bool? = nil) {
        self.verb = verb; self.target = target; self.speedMin = speedMin; self.speedMax = speedMax; self.repair = repair
        self.keepOld = keepOld
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case verb, target, speedMin, speedMax, repair, keepOld
    }
}

/// The answer to one request: `ok` with what the verb returns, or `ok: false` with `error`.
public struct ControlResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    /// The mirror's name.
    public var name: String
    /// Why the request failed, for people (names the device, path or state).
    public var error: String?
    /// A one-line account of what was done (`add`, `speed`, `stop`).
    public var message: String?
    public var status: MirrorStatus?
    /// `check`: what the check found.
    public var check: CheckReport?
    /// `status`: the daemon serving the mirror.
    public var daemon: DaemonInfo?
    /// `status` of a plan (a plan's control socket answers this instead of `status`).
    public var plan: PlanStatus?
    /// `stop` of one of a plan's volumes: the daemon's process goes on serving the others (this
    /// mirror's devices and bitmap are closed already), so nobody waits for it to exit.
    public var staysRunning: Bool?

    public init(ok: Bool, name: String, error: String? = nil, message: String? = nil, status: MirrorStatus? = nil, check: CheckReport? = nil,
                plan: PlanStatus? = nil) {
        self.ok = ok; self.name = name; self.error = error; self.message = message; self.status = status; self.check = check
        self.plan = plan
    }

    public static func failure(_ name: String, _ error: String) -> ControlResponse {
        ControlResponse(ok: false, name: name, error: error)
    }
}

/// The daemon behind a mirror: what `detail` and `list` show besides the mirror's status.
public struct DaemonInfo: Codable, Sendable, Equatable {
    /// Its process id.
    public var pid: Int32
    /// The NBD URIs clients use.
    public var exports: [String]
    /// When it started (ISO 8601, UTC).
    public var started: String
    /// `engine` (this daemon) or `md`.
    public var backend: String
    /// Where Prometheus scrapes it (`--metrics`), if it serves metrics.
    public var metrics: String?

    public init(pid: Int32, exports: [String], started: String, backend: String, metrics: String? = nil) {
        self.pid = pid; self.exports = exports; self.started = started; self.backend = backend; self.metrics = metrics
    }
}

/// JSON lines: one object per line, keys sorted so outputs are stable.
public enum ControlCodec {
    /// Why a line is not a valid message, for people; whatever it quotes of the line is escaped
    /// (`UntrustedText`).
    public struct DecodingFailure: Error, CustomStringConvertible, Sendable {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    public static func encode<T: Encodable>(_ value: T) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        data.append(UInt8(ascii: "\n"))
        return data
    }

    public static func decode<T: Decodable>(_ type: T.Type, from line: Data) throws(DecodingFailure) -> T {
        do {
            return try JSONDecoder().decode(type, from: line)
        } catch let failure as DecodingFailure {
            throw failure
        } catch let error as DecodingError {
            throw DecodingFailure(describe(error))
        } catch {
            throw DecodingFailure(UntrustedText.escape("\(error)"))
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            return "not JSON (a message is one JSON object on one line, such as {\"verb\":\"status\"})"
        case .typeMismatch(_, let context) where context.codingPath.isEmpty:
            return "not a JSON object (a message is one JSON object on one line, such as {\"verb\":\"status\"})"
        case .keyNotFound(let key, _): return "missing key \"\(UntrustedText.escape(key.stringValue))\""
        case .dataCorrupted(let context), .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "bad value at \"\(UntrustedText.escape(context.codingPath.map(\.stringValue).joined(separator: ".")))\": "
                + UntrustedText.escape(context.debugDescription)
        @unknown default: return UntrustedText.escape("\(error)")
        }
    }
}
