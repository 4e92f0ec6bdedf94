# Makes the installed race2mqtt.conf from the example config/race2mqtt.conf:
# the example with the one key a service cannot keep at its default changed.
# store.dir = ./var would be relative to the unit's working directory (/),
# which ProtectSystem=strict makes read-only; the package's is the unit's
# StateDirectory. The line is matched exactly, in section [store]; when the
# example changes, this fails instead of shipping a config that says ./var.
#
# Input: R2M_CONF_IN, R2M_CONF_OUT, R2M_STATE_DIR. Included by
# cmake/package.cmake at configure time; also runs on its own (the test
# feeds it broken examples):
#   cmake -DR2M_CONF_IN=... -DR2M_CONF_OUT=... -DR2M_STATE_DIR=... -P packaging/config.cmake

file(READ "${R2M_CONF_IN}" r2m_conf)
set(r2m_header "\n[store]\n")
set(r2m_old "\n# dir = ./var\n")
string(FIND "${r2m_conf}" "${r2m_header}" r2m_store)
set(r2m_at -1)
if(r2m_store GREATER_EQUAL 0)
  # From the newline that ends "[store]", so that r2m_old may be its first line.
  string(LENGTH "${r2m_header}" r2m_len)
  math(EXPR r2m_body_at "${r2m_store} + ${r2m_len} - 1")
  string(SUBSTRING "${r2m_conf}" ${r2m_body_at} -1 r2m_body)
  string(FIND "${r2m_body}" "\n[" r2m_next)
  string(FIND "${r2m_body}" "${r2m_old}" r2m_rel)
  if(r2m_rel GREATER_EQUAL 0 AND (r2m_next LESS 0 OR r2m_rel LESS r2m_next))
    math(EXPR r2m_at "${r2m_body_at} + ${r2m_rel}")
  endif()
endif()
if(r2m_at LESS 0)
  message(FATAL_ERROR "packaging/config.cmake: no line '# dir = ./var' in section [store] of "
    "${R2M_CONF_IN}: the packaged config would not set store.dir = ${R2M_STATE_DIR}. "
    "Update packaging/config.cmake to the example's new form.")
endif()
string(SUBSTRING "${r2m_conf}" 0 ${r2m_at} r2m_head)
string(LENGTH "${r2m_old}" r2m_len)
math(EXPR r2m_tail_at "${r2m_at} + ${r2m_len}")
string(SUBSTRING "${r2m_conf}" ${r2m_tail_at} -1 r2m_tail)
string(CONCAT r2m_conf "${r2m_head}"
  "\n# ./var by default; race2mqtt.service makes this one (StateDirectory=).\n"
  "dir = ${R2M_STATE_DIR}\n" "${r2m_tail}")
# Through configure_file so that an unchanged result keeps its time stamp:
# a reconfigure then does not make cmake --install copy it again.
file(WRITE "${R2M_CONF_OUT}.tmp" "${r2m_conf}")
configure_file("${R2M_CONF_OUT}.tmp" "${R2M_CONF_OUT}" COPYONLY)
file(REMOVE "${R2M_CONF_OUT}.tmp")
