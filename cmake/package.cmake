# Install layout and the Debian package (CPack DEB).
#
#   cmake -S . -B build-pkg -DCMAKE_INSTALL_PREFIX=/usr -DRACE2MQTT_TESTS=OFF
#   cmake --build build-pkg && (cd build-pkg && cpack -G DEB)
#
# gives race2mqtt_<version>_<arch>.deb. What goes where, with prefix /usr:
#
#   /usr/bin/race2mqtt, /usr/bin/race2mqtt-replay
#   /etc/race2mqtt/race2mqtt.conf        the example config, store.dir set to
#                                        /var/lib/race2mqtt; a dpkg conffile,
#                                        and never overwritten by cmake --install
#   /usr/lib/systemd/system/race2mqtt.service
#
# Nothing is installed into /var/lib/race2mqtt: the unit's StateDirectory=
# makes it (with DynamicUser=yes a symlink to /var/lib/private/race2mqtt,
# owned by the unit's dynamic user), so a package-made directory could only
# have the wrong owner.
#
# The paths are fixed when configuring (the unit names them): give
# CMAKE_INSTALL_PREFIX then, not to cmake --install --prefix.

install(TARGETS race2mqtt RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# The installed config: packaging/config.cmake says how it is made.
set(R2M_CONF_IN ${PROJECT_SOURCE_DIR}/config/race2mqtt.conf)
set(R2M_CONF_OUT ${PROJECT_BINARY_DIR}/packaging/race2mqtt.conf)
set(R2M_STATE_DIR /var/lib/race2mqtt)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${R2M_CONF_IN}
  ${PROJECT_SOURCE_DIR}/packaging/config.cmake)
include(${PROJECT_SOURCE_DIR}/packaging/config.cmake)

# An existing config is the admin's: install(FILES) would replace it on every
# cmake --install. file(INSTALL) prepends DESTDIR itself; the check must too.
set(R2M_CONF_DIR ${CMAKE_INSTALL_FULL_SYSCONFDIR}/race2mqtt)
install(CODE "
  set(r2m_conf_dst \"\$ENV{DESTDIR}${R2M_CONF_DIR}/race2mqtt.conf\")
  if(EXISTS \"\${r2m_conf_dst}\")
    message(STATUS \"Kept: \${r2m_conf_dst} (an existing configuration is never replaced; \"
      \"the new example is ${R2M_CONF_OUT})\")
  else()
    file(INSTALL DESTINATION \"${R2M_CONF_DIR}\" TYPE FILE
      PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
      FILES \"${R2M_CONF_OUT}\")
  endif()")

# The unit, with the real paths of this install.
set(RACE2MQTT_SYSTEMD_UNITDIR ${CMAKE_INSTALL_PREFIX}/lib/systemd/system
  CACHE PATH "Where race2mqtt.service is installed")
set(bindir ${CMAKE_INSTALL_FULL_BINDIR})
set(sysconfdir ${CMAKE_INSTALL_FULL_SYSCONFDIR})
configure_file(${PROJECT_SOURCE_DIR}/packaging/race2mqtt.service.in
  ${PROJECT_BINARY_DIR}/packaging/race2mqtt.service @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/packaging/race2mqtt.service
  DESTINATION ${RACE2MQTT_SYSTEMD_UNITDIR})

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME race2mqtt)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "race2mqtt developers <race2mqtt@localhost>")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${CPACK_PACKAGE_CONTACT}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
  "MQTT gateway for race timing (SmartRace webhooks, RACE RESULT decoders)")
# CPack puts the summary first and indents these lines itself.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
  "race2mqtt takes SmartRace webhooks and RACE RESULT decoder passings in and
publishes them to an MQTT broker, journaled to disk before they are
acknowledged. It runs as the systemd service race2mqtt.service, configured in
/etc/race2mqtt/race2mqtt.conf.")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)
# Runtime libraries come from dpkg-shlibdeps, with the versions the binaries
# really need; a hand-kept list goes stale with every new library.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS mosquitto)
# CPack, unlike debhelper, does not mark files under /etc as conffiles: the
# list comes with the maintainer scripts.
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${PROJECT_SOURCE_DIR}/packaging/conffiles
  ${PROJECT_SOURCE_DIR}/packaging/postinst
  ${PROJECT_SOURCE_DIR}/packaging/prerm
  ${PROJECT_SOURCE_DIR}/packaging/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
