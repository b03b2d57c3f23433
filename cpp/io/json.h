// A small strict JSON (RFC 8259) parser, written for untrusted input such as safetensors
// headers. Two layers:
//   - Reader: a pull parser. The caller asks for the value it expects next, so a typed
//     consumer (the safetensors header) never builds a tree and memory stays proportional to
//     what it keeps, and a value of the wrong type is rejected before it is read.
//   - parse(): a DOM built on Reader, for small documents. Object members keep document order
//     and duplicates, so a caller can detect duplicate keys (find_duplicate_key).
// Strictness: strings must be valid UTF-8 with no raw control characters; escapes include
// \uXXXX with surrogate pairs (a lone surrogate is an error); numbers follow the JSON grammar
// exactly and are kept as their literal text, so integers up to 2^64-1 convert exactly;
// nesting deeper than max_depth is an error (never a stack overflow); anything but JSON
// whitespace after the top-level value is an error. Every error carries the byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace llmos {
namespace json {

constexpr int kDefaultMaxDepth = 64;

class ParseError : public std::runtime_error {
 public:
  ParseError(size_t offset, const std::string& message)
      : std::runtime_error("at byte " + std::to_string(offset) + ": " + message),
        offset_(offset), message_(message) {}
  size_t offset() const { return offset_; }
  // The message without the "at byte N: " prefix.
  const std::string& message() const { return message_; }

 private:
  size_t offset_;
  std::string message_;
};

enum class Type { Null, Bool, Number, String, Array, Object };
const char* type_name(Type t);  // "null", "boolean", "number", "string", "array", "object"

// Interpretation of a number literal as a non-negative integer. Exponents and fractions are
// NotInteger even when their value is integral ("1e0", "1.0"), and "-0" is Negative: this
// matches what serde_json accepts for an unsigned field.
enum class IntStatus { Ok, NotInteger, Negative, Overflow };
IntStatus to_u64(const std::string& literal, uint64_t* out);
bool is_integer_literal(const std::string& literal);

// Pull parser over a byte range that must outlive it.
//
// Usage: peek() the next value's type, then consume it with the matching call. Containers:
//   r.begin_object(); std::string k; while (r.next_member(&k)) { ...consume the value... }
//   r.begin_array(); while (r.next_item()) { ...consume the item... }
// next_member/next_item return false after consuming the closing bracket. After the
// top-level value, finish() checks that only whitespace is left.
class Reader {
 public:
  Reader(const char* data, size_t size, int max_depth = kDefaultMaxDepth);

  Type peek();             // type of the next value (does not consume it)
  size_t offset() const { return pos_; }  // where the next token starts (after peek)
  int depth() const { return static_cast<int>(stack_.size()); }

  void begin_object();
  bool next_member(std::string* key);
  void begin_array();
  bool next_item();
  std::string read_string();
  std::string read_number();  // the literal text, validated against the JSON grammar
  bool read_bool();
  void read_null();
  void skip_value();  // any value, including containers (depth limit still applies)
  void finish();

  [[noreturn]] void fail(size_t offset, const std::string& message) const;

 private:
  enum class Frame : uint8_t { ObjectFirst, ObjectNext, ArrayFirst, ArrayNext };
  void skip_ws();
  bool at_end() const { return pos_ >= size_; }
  void expect(char c, const char* what);
  void push(Frame f, size_t at);
  void parse_string_into(std::string* out);
  void append_utf8_sequence(std::string* out);
  uint32_t read_hex4();
  void expect_literal(const char* word);

  const char* data_;
  size_t size_;
  size_t pos_ = 0;
  int max_depth_;
  std::vector<Frame> stack_;
};

// DOM value. Costs roughly 100 bytes per value, so callers must bound the input size
// (the safetensors reader uses Reader instead for that reason).
struct Value {
  Type type = Type::Null;
  bool boolean = false;
  std::string text;  // String: decoded UTF-8; Number: the literal text
  std::vector<Value> items;                            // Array
  std::vector<std::pair<std::string, Value>> members;  // Object: document order, duplicates kept
  size_t offset = 0;                                   // byte offset of the value in the input

  bool is_null() const { return type == Type::Null; }
  bool is_bool() const { return type == Type::Bool; }
  bool is_number() const { return type == Type::Number; }
  bool is_string() const { return type == Type::String; }
  bool is_array() const { return type == Type::Array; }
  bool is_object() const { return type == Type::Object; }

  // First member named key, or nullptr (also when this is not an object).
  const Value* get(const std::string& key) const;
  // Index of the first member whose key repeats an earlier key, or -1.
  long find_duplicate_key() const;
};

// Parses one complete document. Throws ParseError.
Value parse(const char* data, size_t size, int max_depth = kDefaultMaxDepth);
inline Value parse(const std::string& s, int max_depth = kDefaultMaxDepth) {
  return parse(s.data(), s.size(), max_depth);
}

}  // namespace json
}  // namespace llmos
