import ArgumentParser
import Control
import MirrorModel

/// A status with its mirror's name, encoded as one flat JSON object (`name` plus `MirrorStatus`).
struct NamedStatus: Encodable {
    let name: String
    let status: MirrorStatus

    private enum Key: String, CodingKey { case name }

    func encode(to encoder: any Encoder) throws {
        try status.encode(to: encoder)
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(name, forKey: .name)
    }

    var json: String { String(decoding: ControlCodec.encode(self).dropLast(), as: UTF8.self) }
}
