// Strict JSON pull parser and DOM (see json.h for the contract).
#include "io/json.h"

#include <limits>
#include <unordered_set>

namespace llmos {
namespace json {

namespace {

// A byte as it should appear in an error message.
std::string show_byte(unsigned char c) {
  if (c >= 0x20 && c < 0x7f) return std::string("'") + char(c) + "'";
  static const char hex[] = "0123456789abcdef";
  return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
}

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

void append_code_point(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xc0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xe0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(char(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(char(0xf0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(char(0x80 | (cp & 0x3f)));
  }
}

}  // namespace

const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

bool is_integer_literal(const std::string& literal) {
  return !literal.empty() && literal.find_first_of(".eE") == std::string::npos;
}

IntStatus to_u64(const std::string& literal, uint64_t* out) {
  if (!is_integer_literal(literal)) return IntStatus::NotInteger;
  if (literal[0] == '-') return IntStatus::Negative;  // including "-0", as serde_json does
  uint64_t v = 0;
  for (char c : literal) {
    if (!is_digit(c)) return IntStatus::NotInteger;  // unreachable for Reader output
    uint64_t d = uint64_t(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return IntStatus::Overflow;
    v = v * 10 + d;
  }
  *out = v;
  return IntStatus::Ok;
}

// ---------------------------------------------------------------------------------------
// Reader

Reader::Reader(const char* data, size_t size, int max_depth)
    : data_(data), size_(size), max_depth_(max_depth) {}

void Reader::fail(size_t offset, const std::string& message) const {
  throw ParseError(offset, message);
}

void Reader::skip_ws() {
  while (pos_ < size_ && is_ws(data_[pos_])) ++pos_;
}

void Reader::expect(char c, const char* what) {
  skip_ws();
  if (at_end()) fail(pos_, std::string("unexpected end of input, expected ") + what);
  if (data_[pos_] != c)
    fail(pos_, std::string("expected ") + what + ", found " + show_byte(data_[pos_]));
  ++pos_;
}

void Reader::push(Frame f, size_t at) {
  if (static_cast<int>(stack_.size()) >= max_depth_)
    fail(at, "nesting deeper than " + std::to_string(max_depth_) + " levels");
  stack_.push_back(f);
}

Type Reader::peek() {
  skip_ws();
  if (at_end()) fail(pos_, "unexpected end of input, expected a value");
  char c = data_[pos_];
  switch (c) {
    case '{': return Type::Object;
    case '[': return Type::Array;
    case '"': return Type::String;
    case 't': case 'f': return Type::Bool;
    case 'n': return Type::Null;
    default:
      if (c == '-' || is_digit(c)) return Type::Number;
      fail(pos_, "expected a value, found " + show_byte(c));
  }
}

void Reader::begin_object() {
  skip_ws();
  size_t at = pos_;
  expect('{', "'{'");
  push(Frame::ObjectFirst, at);
}

bool Reader::next_member(std::string* key) {
  if (stack_.empty() ||
      (stack_.back() != Frame::ObjectFirst && stack_.back() != Frame::ObjectNext))
    throw std::logic_error("json::Reader::next_member outside an object");
  skip_ws();
  if (at_end()) fail(pos_, "unexpected end of input inside an object");
  if (data_[pos_] == '}') {
    ++pos_;
    stack_.pop_back();
    return false;
  }
  if (stack_.back() == Frame::ObjectNext) {
    if (data_[pos_] != ',')
      fail(pos_, "expected ',' or '}' after an object member, found " + show_byte(data_[pos_]));
    ++pos_;
    skip_ws();
    if (!at_end() && data_[pos_] == '}') fail(pos_, "trailing comma in object");
  }
  if (at_end()) fail(pos_, "unexpected end of input, expected an object key");
  if (data_[pos_] != '"')
    fail(pos_, "expected a string object key, found " + show_byte(data_[pos_]));
  key->clear();
  parse_string_into(key);
  expect(':', "':' after an object key");
  stack_.back() = Frame::ObjectNext;
  return true;
}

void Reader::begin_array() {
  skip_ws();
  size_t at = pos_;
  expect('[', "'['");
  push(Frame::ArrayFirst, at);
}

bool Reader::next_item() {
  if (stack_.empty() ||
      (stack_.back() != Frame::ArrayFirst && stack_.back() != Frame::ArrayNext))
    throw std::logic_error("json::Reader::next_item outside an array");
  skip_ws();
  if (at_end()) fail(pos_, "unexpected end of input inside an array");
  if (data_[pos_] == ']') {
    ++pos_;
    stack_.pop_back();
    return false;
  }
  if (stack_.back() == Frame::ArrayNext) {
    if (data_[pos_] != ',')
      fail(pos_, "expected ',' or ']' after an array item, found " + show_byte(data_[pos_]));
    ++pos_;
    skip_ws();
    if (!at_end() && data_[pos_] == ']') fail(pos_, "trailing comma in array");
  }
  stack_.back() = Frame::ArrayNext;
  return true;
}

std::string Reader::read_string() {
  if (peek() != Type::String) fail(pos_, "expected a string, found " + show_byte(data_[pos_]));
  std::string s;
  parse_string_into(&s);
  return s;
}

uint32_t Reader::read_hex4() {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    if (at_end()) fail(pos_, "unexpected end of input in a \\u escape");
    char c = data_[pos_];
    uint32_t d;
    if (c >= '0' && c <= '9') d = uint32_t(c - '0');
    else if (c >= 'a' && c <= 'f') d = uint32_t(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') d = uint32_t(c - 'A' + 10);
    else fail(pos_, "expected a hex digit in a \\u escape, found " + show_byte(c));
    v = v * 16 + d;
    ++pos_;
  }
  return v;
}

// Validates one multi-byte UTF-8 sequence at pos_ (Unicode table 3-7: no overlong forms, no
// encoded surrogates, nothing above U+10FFFF) and copies it.
void Reader::append_utf8_sequence(std::string* out) {
  size_t start = pos_;
  auto b = [&](size_t i) { return static_cast<unsigned char>(data_[start + i]); };
  unsigned char c = b(0);
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c == 0xe0) { len = 3; lo = 0xa0; }
  else if (c >= 0xe1 && c <= 0xec) len = 3;
  else if (c == 0xed) { len = 3; hi = 0x9f; }
  else if (c >= 0xee && c <= 0xef) len = 3;
  else if (c == 0xf0) { len = 4; lo = 0x90; }
  else if (c >= 0xf1 && c <= 0xf3) len = 4;
  else if (c == 0xf4) { len = 4; hi = 0x8f; }
  else fail(start, "invalid UTF-8 lead " + show_byte(c));
  if (size_ - start < len) fail(start, "truncated UTF-8 sequence");
  if (b(1) < lo || b(1) > hi) fail(start + 1, "invalid UTF-8 continuation " + show_byte(b(1)));
  for (size_t i = 2; i < len; ++i)
    if (b(i) < 0x80 || b(i) > 0xbf) fail(start + i, "invalid UTF-8 continuation " + show_byte(b(i)));
  out->append(data_ + start, len);
  pos_ = start + len;
}

void Reader::parse_string_into(std::string* out) {
  size_t start = pos_;
  ++pos_;  // opening quote, checked by the caller
  for (;;) {
    if (at_end()) fail(start, "unterminated string");
    unsigned char c = static_cast<unsigned char>(data_[pos_]);
    if (c == '"') {
      ++pos_;
      return;
    }
    if (c == '\\') {
      size_t esc = pos_;
      ++pos_;
      if (at_end()) fail(esc, "unterminated escape in string");
      char e = data_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = read_hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) fail(esc, "unpaired low surrogate in \\u escape");
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (size_ - pos_ < 2 || data_[pos_] != '\\' || data_[pos_ + 1] != 'u')
              fail(esc, "high surrogate \\u escape not followed by a low surrogate");
            pos_ += 2;
            uint32_t low = read_hex4();
            if (low < 0xdc00 || low > 0xdfff)
              fail(esc, "high surrogate \\u escape not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          }
          append_code_point(out, cp);
          break;
        }
        default:
          // show_byte, not the raw byte: messages must stay valid UTF-8.
          fail(esc, "invalid escape: backslash followed by " + show_byte(static_cast<unsigned char>(e)));
      }
    } else if (c < 0x20) {
      fail(pos_, "unescaped control character " + show_byte(c) + " in string");
    } else if (c < 0x80) {
      out->push_back(char(c));
      ++pos_;
    } else {
      append_utf8_sequence(out);
    }
  }
}

std::string Reader::read_number() {
  if (peek() != Type::Number) fail(pos_, "expected a number, found " + show_byte(data_[pos_]));
  size_t start = pos_;
  if (data_[pos_] == '-') ++pos_;
  if (at_end() || !is_digit(data_[pos_])) fail(start, "invalid number: no digits after '-'");
  if (data_[pos_] == '0') {
    ++pos_;
    if (!at_end() && is_digit(data_[pos_])) fail(start, "invalid number: leading zero");
  } else {
    while (!at_end() && is_digit(data_[pos_])) ++pos_;
  }
  if (!at_end() && data_[pos_] == '.') {
    ++pos_;
    if (at_end() || !is_digit(data_[pos_])) fail(start, "invalid number: no digits after '.'");
    while (!at_end() && is_digit(data_[pos_])) ++pos_;
  }
  if (!at_end() && (data_[pos_] == 'e' || data_[pos_] == 'E')) {
    ++pos_;
    if (!at_end() && (data_[pos_] == '+' || data_[pos_] == '-')) ++pos_;
    if (at_end() || !is_digit(data_[pos_])) fail(start, "invalid number: no digits in exponent");
    while (!at_end() && is_digit(data_[pos_])) ++pos_;
  }
  return std::string(data_ + start, pos_ - start);
}

void Reader::expect_literal(const char* word) {
  size_t start = pos_;
  for (const char* p = word; *p; ++p, ++pos_)
    if (at_end() || data_[pos_] != *p) fail(start, std::string("invalid literal, expected ") + word);
}

bool Reader::read_bool() {
  if (peek() != Type::Bool) fail(pos_, "expected true or false, found " + show_byte(data_[pos_]));
  if (data_[pos_] == 't') {
    expect_literal("true");
    return true;
  }
  expect_literal("false");
  return false;
}

void Reader::read_null() {
  if (peek() != Type::Null) fail(pos_, "expected null, found " + show_byte(data_[pos_]));
  expect_literal("null");
}

// Iterative, so skipping a deep value costs no native stack; the depth limit still applies.
void Reader::skip_value() {
  const size_t base = stack_.size();
  std::string scratch;
  do {
    if (stack_.size() > base) {
      Frame f = stack_.back();
      bool more = (f == Frame::ObjectFirst || f == Frame::ObjectNext) ? next_member(&scratch)
                                                                     : next_item();
      if (!more) continue;
    }
    switch (peek()) {
      case Type::Object: begin_object(); break;
      case Type::Array: begin_array(); break;
      case Type::String: scratch.clear(); parse_string_into(&scratch); break;
      case Type::Number: read_number(); break;
      case Type::Bool: read_bool(); break;
      case Type::Null: read_null(); break;
    }
  } while (stack_.size() > base);
}

void Reader::finish() {
  if (!stack_.empty()) throw std::logic_error("json::Reader::finish inside a container");
  skip_ws();
  if (!at_end()) fail(pos_, "unexpected " + show_byte(data_[pos_]) + " after the JSON value");
}

// ---------------------------------------------------------------------------------------
// DOM

const Value* Value::get(const std::string& key) const {
  for (const auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
}

long Value::find_duplicate_key() const {
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < members.size(); ++i)
    if (!seen.insert(members[i].first).second) return static_cast<long>(i);
  return -1;
}

namespace {

// Recursion depth is bounded by the Reader's max_depth.
void parse_value(Reader& r, Value* v) {
  v->type = r.peek();
  v->offset = r.offset();
  switch (v->type) {
    case Type::Null: r.read_null(); break;
    case Type::Bool: v->boolean = r.read_bool(); break;
    case Type::Number: v->text = r.read_number(); break;
    case Type::String: v->text = r.read_string(); break;
    case Type::Array:
      r.begin_array();
      while (r.next_item()) {
        v->items.emplace_back();
        parse_value(r, &v->items.back());
      }
      break;
    case Type::Object: {
      r.begin_object();
      std::string key;
      while (r.next_member(&key)) {
        v->members.emplace_back(std::move(key), Value());
        parse_value(r, &v->members.back().second);
        key.clear();
      }
      break;
    }
  }
}

}  // namespace

Value parse(const char* data, size_t size, int max_depth) {
  Reader r(data, size, max_depth);
  Value v;
  parse_value(r, &v);
  r.finish();
  return v;
}

}  // namespace json
}  // namespace llmos
