//! Structs that JSON writes as objects only. serde's derived deserializer
//! also takes a struct from an array of its fields in order (`["5s"]` for a
//! schedule), which the manifest and batch schemas do not allow and which
//! would keep a shape no reader of the schema expects.

/// Implements `Deserialize`, from a map only, for a struct whose derives are
/// made inherent with `#[serde(remote = "Self")]`; with `, serialize`, also
/// `Serialize` (which that attribute makes inherent too).
macro_rules! object_only {
    ($ty:ty, $expecting:literal, serialize) => {
        $crate::workflow::object::object_only!($ty, $expecting);

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }
    };
    ($ty:ty, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        // The inherent function: the derived deserializer.
                        <$ty>::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
    };
}

pub(crate) use object_only;
